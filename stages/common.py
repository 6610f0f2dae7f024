"""Shared helpers for every stage: paths, params loading and validation, atomic writes.

Config flows one way: ``params.yaml`` -> ``load_params()`` -> ``validate_*()`` -> typed
dataclasses that ``main()`` passes on as keyword arguments. Nothing here imports TensorFlow
or MLflow, so validation is instant and runs before any heavy work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

# Paths are relative to the working directory: DVC runs every stage from the project root
# (or from the root of a temporary copy for `dvc exp run --temp` / `--queue`).
PARAMS_FILE = Path("params.yaml")
RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
TRAIN_METRICS_DIR = Path("metrics/train")
HISTORY_DIR = Path("metrics/history")
TUNE_DIR = Path("metrics/tune")
EVALUATE_METRICS_FILE = Path("metrics/evaluate.json")
REPORTS_DIR = Path("reports")
# Epoch checkpoints of interrupted trainings (train.resume): not DVC outputs, not in git.
CHECKPOINTS_DIR = Path(".checkpoints")

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

SECTIONS = (
    "download",
    "preprocess",
    "model",
    "train",
    "compare",
    "optimizers",
    "tune",
    "gd_variants",
    "trajectories",
    "mlflow",
    "evaluate",
)

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """An error the user can fix: bad params, bad data, an unreachable service."""


class ParamsError(PipelineError):
    """A value in params.yaml is missing, unknown or invalid."""


# --------------------------------------------------------------------------- params loading


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float, as YAML 1.2 (and DVC's ruamel) do."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where it is, then what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(part for part in what if part) or str(exc).splitlines()[0]
    return f"{where}: {text}"


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml; a missing file, a YAML error or an unknown section is a ParamsError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root)") from None
    try:
        params = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML{yaml_error_text(exc)}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections {', '.join(SECTIONS)}")
    _check_keys(params, SECTIONS, str(path), required=SECTIONS)
    return params


def _check_keys(
    section: Mapping[str, Any],
    allowed: tuple[str, ...],
    where: str,
    required: tuple[str, ...] = (),
) -> None:
    if not isinstance(section, Mapping):
        raise ParamsError(f"{where}: expected a mapping, got {section!r}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"expected: {', '.join(allowed)}"
        )
    missing = [key for key in required if key not in section]
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any, key: str) -> int:
    """Return ``value`` if it is an int > 0, else raise a ParamsError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ParamsError(f"{key}: expected a positive integer, got {value!r}")
    return value


def non_negative_int(value: Any, key: str) -> int:
    """Return ``value`` if it is an int >= 0, else raise a ParamsError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ParamsError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def finite_number(value: Any, key: str) -> float:
    """Return ``value`` as a float if it is a finite number, else raise a ParamsError."""
    if not _is_number(value) or not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- typed sections


@dataclass(frozen=True)
class DownloadConfig:
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # file name -> SHA-256 of its decompressed content
    timeout_seconds: float


@dataclass(frozen=True)
class PreprocessConfig:
    val_fraction: float
    subset: int | None


@dataclass(frozen=True)
class ModelConfig:
    conv_blocks: tuple[tuple[int, ...], ...]  # filters of each block's Conv2D layers
    kernel_size: int
    pool_size: int
    dense_units: tuple[int, ...]
    num_classes: int


PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    seeds: tuple[int, ...]  # one training run per optimizer and seed
    precision: str = "float32"  # a Keras dtype policy: float32, or mixed_bfloat16 (opt-in)
    resume: bool = False  # keep an epoch checkpoint and continue from it after a stop


@dataclass(frozen=True)
class TuneConfig:
    low: float  # the grid of learning rates: `points` values, log-spaced from low to high
    high: float
    points: int
    images: int  # the budget of each trial: the first `images` training images ...
    epochs: int  # ... for `epochs` epochs, judged on the whole validation split
    seed: int


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    reference_val_accuracy: dict[str, float]  # optimizer name -> percent
    targets: tuple[float, ...] = (0.98, 0.97)  # validation accuracies to time, as fractions
    confidence: float = 0.95  # of the intervals over seeds and of the significance tests


def validate_download(section: Any) -> DownloadConfig:
    """Check the `download` section: mirror URLs, one SHA-256 per MNIST file, a timeout."""
    _check_keys(section, ("mirrors", "sha256", "timeout_seconds"), "download", ("sha256",))
    mirrors = section.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
        raise ParamsError(f"download.mirrors: expected a list of base URLs, got {mirrors!r}")
    sha256 = section["sha256"]
    _check_keys(sha256, MNIST_FILES, "download.sha256", MNIST_FILES)
    for name, digest in sha256.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ParamsError(
                f"download.sha256.{name}: expected 64 lowercase hex digits, got {digest!r}"
            )
    timeout = finite_number(section.get("timeout_seconds", 30), "download.timeout_seconds")
    if timeout <= 0:
        raise ParamsError(f"download.timeout_seconds: expected > 0, got {timeout!r}")
    return DownloadConfig(tuple(mirrors), dict(sha256), timeout)


def validate_preprocess(section: Any) -> PreprocessConfig:
    """Check the `preprocess` section: 0 < val_fraction < 1, subset null or a positive int."""
    _check_keys(section, ("val_fraction", "subset"), "preprocess", ("val_fraction",))
    val_fraction = finite_number(section["val_fraction"], "preprocess.val_fraction")
    if not 0 < val_fraction < 1:
        raise ParamsError(
            f"preprocess.val_fraction: expected a number strictly between 0 and 1, "
            f"got {section['val_fraction']!r}"
        )
    subset = section.get("subset")
    if subset is not None:
        subset = positive_int(subset, "preprocess.subset")
    return PreprocessConfig(val_fraction, subset)


def _int_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ParamsError(f"{key}: expected a non-empty list of positive integers, got {value!r}")
    return tuple(positive_int(v, f"{key}[{i}]") for i, v in enumerate(value))


def validate_model(section: Any) -> ModelConfig:
    """Check the `model` section that sizes the CNN."""
    keys = ("conv_blocks", "kernel_size", "pool_size", "dense_units", "num_classes")
    _check_keys(section, keys, "model", keys)
    blocks = section["conv_blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise ParamsError(f"model.conv_blocks: expected a list of lists of filters, got {blocks!r}")
    return ModelConfig(
        conv_blocks=tuple(_int_list(b, f"model.conv_blocks[{i}]") for i, b in enumerate(blocks)),
        kernel_size=positive_int(section["kernel_size"], "model.kernel_size"),
        pool_size=positive_int(section["pool_size"], "model.pool_size"),
        dense_units=_int_list(section["dense_units"], "model.dense_units"),
        num_classes=positive_int(section["num_classes"], "model.num_classes"),
    )


def validate_train(section: Any) -> TrainConfig:
    """Check the `train` section: positive epochs and batch size, a list of distinct
    non-negative integer seeds, a precision."""
    keys = ("epochs", "batch_size", "seeds", "precision", "resume")
    _check_keys(section, keys, "train", ("epochs", "batch_size", "seeds"))
    seeds = section["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)
    ):
        raise ParamsError(
            f"train.seeds: expected a non-empty list of non-negative integers, got {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"train.seeds: each seed once, got {seeds!r}")
    precision = section.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ParamsError(
            f"train.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    resume = section.get("resume", False)
    if not isinstance(resume, bool):
        raise ParamsError(f"train.resume: expected true or false, got {resume!r}")
    return TrainConfig(
        epochs=positive_int(section["epochs"], "train.epochs"),
        batch_size=positive_int(section["batch_size"], "train.batch_size"),
        seeds=tuple(seeds),
        precision=precision,
        resume=resume,
    )


def run_key(optimizer: str, seed: int, tuned: bool = False) -> str:
    """The name of one training run, as DVC names its stage (`train@adam-42`) and as its
    files are named (models/adam-42.keras; models/adam-42-tuned.keras with the tuned rate)."""
    return f"{optimizer}-{seed}-tuned" if tuned else f"{optimizer}-{seed}"


def validate_optimizer_names(section: Any) -> dict[str, dict[str, Any]]:
    """Check that `optimizers` is a non-empty mapping of name -> dict of hyperparameters.

    Whether each name is a real Keras optimizer is checked by ``stages.train.build_optimizer``,
    which needs Keras.
    """
    if not isinstance(section, Mapping) or not section:
        raise ParamsError(
            "optimizers: expected at least one entry, e.g. `adam: {learning_rate: 0.001}`"
        )
    result = {}
    for name, spec in section.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ParamsError(
                f"optimizers.{name}: a name may hold only letters, digits, '_' and '-'"
            )
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise ParamsError(
                f"optimizers.{name}: expected a mapping of hyperparameters, got {spec!r}"
            )
        result[name] = dict(spec)
    return result


def validate_compare(section: Any, optimizers: Mapping[str, Any]) -> list[str]:
    """Check `compare`: a non-empty list of distinct entries of `optimizers`."""
    if not isinstance(section, list) or not section:
        raise ParamsError(f"compare: expected a non-empty list of optimizer names, got {section!r}")
    unknown = [name for name in section if name not in optimizers]
    if unknown:
        raise ParamsError(
            f"compare: {', '.join(map(str, unknown))} not in `optimizers`; "
            f"entries: {', '.join(optimizers)}"
        )
    if len(set(section)) != len(section):
        raise ParamsError(f"compare: each optimizer once, got {section!r}")
    return list(section)


def validate_tune(section: Any) -> TuneConfig:
    """Check the `tune` section: the learning-rate grid and each trial's budget."""
    keys = ("low", "high", "points", "images", "epochs", "seed")
    _check_keys(section, keys, "tune", keys)
    low = finite_number(section["low"], "tune.low")
    high = finite_number(section["high"], "tune.high")
    if not 0 < low < high:
        raise ParamsError(f"tune: expected 0 < low < high, got low {low!r}, high {high!r}")
    points = positive_int(section["points"], "tune.points")
    if points < 2:
        raise ParamsError(f"tune.points: expected at least 2, got {points}")
    seed = section["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamsError(f"tune.seed: expected a non-negative integer, got {seed!r}")
    return TuneConfig(
        low=low,
        high=high,
        points=points,
        images=positive_int(section["images"], "tune.images"),
        epochs=positive_int(section["epochs"], "tune.epochs"),
        seed=seed,
    )


def validate_mlflow(section: Any) -> str:
    """Check the `mlflow` section; return the experiment name."""
    _check_keys(section, ("experiment_name",), "mlflow", ("experiment_name",))
    name = section["experiment_name"]
    if not isinstance(name, str) or not name.strip():
        raise ParamsError(f"mlflow.experiment_name: expected a non-empty string, got {name!r}")
    return name


def validate_evaluate(section: Any) -> EvaluateConfig:
    """Check the `evaluate` section: prediction batch size, the reference accuracies, the
    validation targets to time and the confidence level."""
    keys = ("batch_size", "reference_val_accuracy", "targets", "confidence")
    _check_keys(section, keys, "evaluate", ("batch_size",))
    reference = section.get("reference_val_accuracy") or {}
    if not isinstance(reference, Mapping):
        raise ParamsError(
            f"evaluate.reference_val_accuracy: expected a mapping of optimizer -> percent, "
            f"got {reference!r}"
        )
    targets = section.get("targets", [0.98, 0.97])
    if not isinstance(targets, list) or not all(_is_number(t) and 0 < t <= 1 for t in targets):
        raise ParamsError(
            f"evaluate.targets: expected a list of accuracies in (0, 1], got {targets!r}"
        )
    confidence = section.get("confidence", 0.95)
    if not _is_number(confidence) or not 0 < confidence < 1:
        raise ParamsError(f"evaluate.confidence: expected a number in (0, 1), got {confidence!r}")
    return EvaluateConfig(
        batch_size=positive_int(section["batch_size"], "evaluate.batch_size"),
        reference_val_accuracy={
            name: finite_number(v, f"evaluate.reference_val_accuracy.{name}")
            for name, v in reference.items()
        },
        targets=tuple(float(t) for t in targets),
        confidence=float(confidence),
    )


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    A failure (or Ctrl-C) removes the temporary file, so ``path`` is either the old file or
    the complete new one, never half-written. A full disk or any other OS error becomes
    one WriteError that names the file. ``suffix`` keeps an extension that a writer needs
    (Keras saves only to names ending in `.keras`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
    except OSError as exc:
        raise WriteError(path, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class WriteError(PipelineError):
    """An output could not be written (a full disk, a read-only folder); nothing replaced."""

    def __init__(self, path: Path, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        super().__init__(
            f"{path}: cannot write it: {reason}; "
            + ("the previous file is unchanged" if path.exists() else "nothing was written")
        )


def write_atomic(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file, then move it onto ``path``."""
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle,
    ):
        write(handle)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(path, lambda handle: handle.write(text))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by an earlier stage, with a clear error if it is missing."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(
            f"{path}: not found; run the stage that writes it (dvc repro)"
        ) from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- processed data


def load_arrays(data_dir: Path, *names: str) -> list[np.ndarray]:
    """Load processed arrays by name, with a clear error if one is missing. Never unpickles:
    a file holding Python objects is refused, not run."""
    arrays = []
    for name in names:
        path = data_dir / f"{name}.npy"
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except FileNotFoundError:
            raise PipelineError(f"{path}: not found; run the preprocess stage first") from None
        except ValueError as exc:
            raise PipelineError(
                f"{path}: refused, not a plain numeric array ({exc}); "
                "rerun the preprocess stage: dvc repro --force preprocess"
            ) from None
    return arrays


def load_training_data(images: int | None = None) -> dict[str, np.ndarray]:
    """The processed training arrays (the first ``images`` of them, or all) and the whole
    validation set, keyed as ``train.fit_model`` takes them."""
    x_train, y_train, x_val, y_val = load_arrays(
        PROCESSED_DIR, "x_train", "y_train", "x_val", "y_val"
    )
    return {
        "x_train": x_train[:images],
        "y_train": y_train[:images],
        "x_val": x_val,
        "y_val": y_val,
    }


# --------------------------------------------------------------------------- entry points


def setup_logging() -> None:
    """Log INFO and above to stderr in one compact format."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )


class Terminated(BaseException):
    """SIGTERM arrived (`kill`, a closing terminal, `dvc queue kill`): unwinds the stage like
    Ctrl-C's KeyboardInterrupt, so that no output is written and the MLflow run is ended."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's ``main``; a PipelineError becomes one clear line and exit status 1.
    SIGINT (Ctrl-C) and SIGTERM stop it at once, writing nothing, with status 130 or 143."""
    setup_logging()
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(sys.argv[1:])
    except PipelineError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        log.error("interrupted (SIGINT): no output written; `dvc repro` runs the stage again")
        sys.exit(128 + signal.SIGINT)
    except Terminated:
        log.error("terminated (SIGTERM): no output written; `dvc repro` runs the stage again")
        sys.exit(128 + signal.SIGTERM)
