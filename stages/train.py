"""Stage `train@<optimizer>-<seed>`: train the CNN with one optimizer from one seed, log the
run to MLflow.

`<optimizer>` is a key of `optimizers` in params.yaml. Its value holds the constructor
arguments of a Keras optimizer; the class is the key itself (`adam` -> `keras.optimizers.Adam`)
unless the entry names it with `class:`. `<seed>` is one of `train.seeds`. Writes
models/<optimizer>-<seed>.keras, a per-epoch history (metrics/history/<optimizer>-<seed>.csv)
and metrics/train/<optimizer>-<seed>.json, which holds the MLflow run id.

    python -m stages.train adam 42     # what `dvc repro train@adam-42` runs
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import io
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import infer_signature

from stages import runtime, tracking
from stages.common import (
    CHECKPOINTS_DIR,
    HISTORY_DIR,
    MODELS_DIR,
    PROCESSED_DIR,
    TRAIN_METRICS_DIR,
    TUNE_DIR,
    ModelConfig,
    ParamsError,
    TrainConfig,
    atomic_path,
    load_training_data,
    load_params,
    read_json,
    run_key,
    run_stage,
    validate_mlflow,
    validate_model,
    validate_optimizer_names,
    validate_train,
    write_json_atomic,
    write_text_atomic,
)

CLASS_KEY = "class"
# Optimizers that wrap others or need per-variable structure: not usable from params alone.
NOT_STANDALONE = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer"}
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")

log = logging.getLogger(__name__)


def optimizer_classes() -> dict[str, type[keras.optimizers.Optimizer]]:
    """Every standalone optimizer class in `keras.optimizers`, by class name."""
    return {
        name: cls
        for name, cls in vars(keras.optimizers).items()
        if isinstance(cls, type)
        and issubclass(cls, keras.optimizers.Optimizer)
        and name not in NOT_STANDALONE
    }


def _coerce_hyperparameter(value: Any, default: Any, key: str) -> Any:
    """Reject NaN/inf and numbers given as unparseable strings (`1e-3x`)."""
    numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
    if isinstance(value, str) and numeric_default:
        raise ParamsError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return value


def build_optimizer(name: str, spec: dict[str, Any]) -> keras.optimizers.Optimizer:
    """Build the Keras optimizer that `optimizers.<name>` describes; ParamsError if it
    names no Keras optimizer or passes an argument that optimizer does not take."""
    classes = optimizer_classes()
    by_lower = {cls_name.lower(): cls for cls_name, cls in classes.items()}
    hyperparameters = dict(spec)
    class_name = hyperparameters.pop(CLASS_KEY, name)
    cls = classes.get(class_name) or by_lower.get(str(class_name).lower())
    if cls is None:
        where = f"optimizers.{name}.{CLASS_KEY}" if CLASS_KEY in spec else f"optimizers.{name}"
        raise ParamsError(
            f"{where}: {class_name!r} is not a Keras optimizer; valid names: "
            f"{', '.join(sorted(classes))} (any case), or set `{CLASS_KEY}:` to one of them"
        )
    signature = inspect.signature(cls.__init__)
    accepted = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in ("self", "name") and p.kind is not p.VAR_KEYWORD
    }
    for key, value in hyperparameters.items():
        where = f"optimizers.{name}.{key}"
        if key not in accepted:
            raise ParamsError(
                f"{where}: {cls.__name__} takes no argument {key!r}; it takes: "
                f"{', '.join(accepted)}"
            )
        hyperparameters[key] = _coerce_hyperparameter(value, accepted[key], where)
    learning_rate = hyperparameters.get("learning_rate")
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ParamsError(f"optimizers.{name}.learning_rate: expected > 0, got {learning_rate!r}")
    try:
        return cls(**hyperparameters)
    except (ValueError, TypeError) as exc:
        raise ParamsError(
            f"optimizers.{name}: {cls.__name__} rejected {hyperparameters}: {exc}"
        ) from None


def cpu_has_bf16() -> bool:
    """True when the CPU has BF16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", cpuinfo) is not None


def effective_precision(requested: str) -> str:
    """The dtype policy to train with: ``requested``, or float32 (with a warning) when
    mixed_bfloat16 is asked for on a CPU without BF16 instructions, where it would be slow."""
    if requested != "mixed_bfloat16" or cpu_has_bf16() or tf.config.list_physical_devices("GPU"):
        return requested
    log.warning(
        "train.precision: mixed_bfloat16 needs a CPU with BF16 instructions (avx512_bf16, "
        "amx_bf16 or Arm bf16) and this one has none; training in float32 instead"
    )
    return "float32"


def build_model(config: ModelConfig, input_shape: tuple[int, ...]) -> keras.Sequential:
    """The CNN: per block, Conv2D layers then a max pool; then dense layers and a softmax.

    Layers compute in the global dtype policy (see `effective_precision`); the softmax
    always outputs float32, as Keras' mixed-precision guide advises."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=input_shape)]
    for filters in config.conv_blocks:
        layers += [keras.layers.Conv2D(f, config.kernel_size, activation="relu") for f in filters]
        layers.append(keras.layers.MaxPooling2D(config.pool_size))
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(units, activation="relu") for units in config.dense_units]
    layers.append(keras.layers.Dense(config.num_classes, activation="softmax", dtype="float32"))
    return keras.Sequential(layers, name="mnist_cnn")


class EpochTracker(keras.callbacks.Callback):
    """Times each epoch, adds `epoch_seconds` to its logs and sends them to MLflow
    with step = epochs completed (1, 2, ...); counts the seconds spent logging."""

    def __init__(self, history: list[dict[str, float]] | None = None) -> None:
        """``history``: the epochs a resumed training already has."""
        super().__init__()
        self.history: list[dict[str, float]] = list(history or [])
        self.logging_seconds = 0.0
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {key: float(value) for key, value in (logs or {}).items()}
        row["epoch_seconds"] = time.perf_counter() - self._start
        before_logging = time.perf_counter()
        mlflow.log_metrics(row, step=epoch + 1)
        self.logging_seconds += time.perf_counter() - before_logging
        self.history.append({"epoch": epoch + 1, **row})
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in row.items()))


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch, save the weights and optimizer state as `epoch-<n>.weights.h5`,
    then the history so far as `history.json`, each atomically: a stop at any moment
    leaves the last complete pair. (Keras' BackupAndRestore writes its file in place, and a
    SIGTERM during that write left a file it could not load.)"""

    def __init__(self, folder: Path, tracker: EpochTracker) -> None:
        super().__init__()
        self.folder = folder
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        weights = self.folder / f"epoch-{epoch + 1}.weights.h5"
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        write_json_atomic(self.folder / HISTORY_FILE, self.tracker.history)
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)


HISTORY_FILE = "history.json"


def checkpoint_dir(key: str, config: dict[str, Any]) -> Path:
    """The checkpoint folder of one training and configuration: a checkpoint made with other
    params or data is never resumed, it is simply not found."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return CHECKPOINTS_DIR / f"{key}-{digest[:16]}"


def resume_from(folder: Path, model: keras.Model) -> list[dict[str, float]]:
    """Load the last complete checkpoint in ``folder`` into ``model`` (weights and optimizer
    state); return the history of the epochs it holds, or [] to start from scratch."""
    try:
        history = json.loads((folder / HISTORY_FILE).read_text())
    except (OSError, ValueError):
        return []
    weights = folder / f"epoch-{len(history)}.weights.h5"
    if not history or not weights.exists():
        return []
    model.optimizer.build(model.trainable_variables)  # so that its state can be loaded
    model.load_weights(weights)
    return history


def fit_model(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    data: dict[str, np.ndarray],
    epochs: int,
    batch_size: int,
    checkpoint: Path | None = None,
) -> EpochTracker:
    """Compile and fit; return the tracker that holds one row per epoch and its seconds.
    With ``checkpoint``, keep the weights, optimizer state and history there after every
    epoch, and continue from them if an earlier run left them."""
    # Integer labels with the sparse loss: the same categorical cross-entropy, no one-hot copy.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    done: list[dict[str, float]] = []
    if checkpoint is not None:
        done = resume_from(checkpoint, model)
        if done:
            log.info("resuming from %s after epoch %d of %d", checkpoint, len(done), epochs)
            for row in done:  # the new MLflow run gets the whole history
                mlflow.log_metrics(
                    {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
                )
            mlflow.set_tag("resumed_after_epoch", str(len(done)))
    tracker = EpochTracker(done)
    callbacks: list[keras.callbacks.Callback] = [tracker]
    if checkpoint is not None:
        callbacks.append(EpochCheckpoint(checkpoint, tracker))
    model.fit(
        data["x_train"],
        data["y_train"],
        validation_data=(data["x_val"], data["y_val"]),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        initial_epoch=len(done),
        verbose=2,
    )
    return tracker


@contextlib.contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``seconds[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


def history_csv(history: list[dict[str, float]]) -> str:
    """The per-epoch history as CSV text with a header row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def run_params(
    name: str,
    optimizer: keras.optimizers.Optimizer,
    model_config: ModelConfig,
    train_config: TrainConfig,
    model: keras.Model,
    data_summary: dict[str, Any],
) -> dict[str, Any]:
    """Every param of the run, flat: the optimizer as Keras really built it (defaults
    included), the training settings, the architecture and the data it saw."""
    params: dict[str, Any] = {"optimizer": name, "optimizer.class": type(optimizer).__name__}
    config = optimizer.get_config()
    # Keras keeps the learning rate in a float32 variable: log 0.001, not 0.0010000000474974513.
    if isinstance(config.get("learning_rate"), float):
        config["learning_rate"] = str(np.float32(config["learning_rate"]))
    params |= {f"optimizer.{k}": v for k, v in config.items() if k != "name"}
    params |= {f"train.{k}": v for k, v in asdict(train_config).items()}
    params |= {f"model.{k}": v for k, v in asdict(model_config).items()}
    params["model.parameters"] = model.count_params()
    params["loss"] = "categorical cross-entropy (sparse integer labels)"
    params |= {f"data.{split}_images": n for split, n in data_summary["counts"].items()}
    params["data.subset"] = data_summary["subset"]
    params["data.val_fraction"] = data_summary["val_fraction"]
    params |= {f"data.sha256.{file}": digest for file, digest in data_summary["sha256"].items()}
    return params


class KerasFlavor:
    """`mlflow.keras`, with the model directory created before MLflow writes the input
    example into it (mlflow.keras.log_model fails otherwise: mlflow/mlflow#16183)."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def model_requirements() -> list[str]:
    """Pinned requirements for the logged model, without MLflow's slow inference subprocess."""
    backend = "tensorflow"
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            backend = f"{dist}=={metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            continue
    return [f"mlflow=={mlflow.__version__}", f"keras=={keras.__version__}", backend]


def log_model(model: keras.Model, example: np.ndarray) -> None:
    """Log ``model`` to the active run as `model/`, with its signature and an input example."""
    mlflow.models.Model.log(
        artifact_path=None,
        name="model",
        flavor=KerasFlavor,
        flavor_name="mlflow.keras",
        model=model,
        signature=infer_signature(example, model.predict(example, verbose=0)),
        input_example=example,
        pip_requirements=model_requirements(),
    )


def save_model(model: keras.Model, path: Path) -> None:
    """Save ``model`` in the `.keras` format, atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def train(name: str, seed: int, params: dict[str, Any], tuned: bool = False) -> None:
    """Validate everything, check the tracking store, then train, log and save. ``tuned``
    trains with the best learning rate of `tune@<name>` (metrics/tune/<name>.json)."""
    specs = validate_optimizer_names(params["optimizers"])
    if name not in specs:
        raise ParamsError(f"optimizers.{name}: no such entry; entries: {', '.join(specs)}")
    spec = specs[name]
    if tuned:
        spec = spec | {"learning_rate": read_json(TUNE_DIR / f"{name}.json")["best_learning_rate"]}
    model_config = validate_model(params["model"])
    train_config = validate_train(params["train"])
    if seed not in train_config.seeds:
        raise ParamsError(f"train.seeds: {seed} is not one of {list(train_config.seeds)}")
    experiment_name = validate_mlflow(params["mlflow"])
    threads = runtime.configure_threads()  # before the first TensorFlow op
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    optimizer = build_optimizer(name, spec)
    experiment_id = tracking.setup_experiment(experiment_name)
    key = run_key(name, seed, tuned)

    seconds: dict[str, float] = {}  # where the stage's time goes, for benchmarks/
    with timed(seconds, "load_data"):
        data = load_training_data()
        data_summary = read_json(PROCESSED_DIR / "data.json")
    precision = effective_precision(train_config.precision)
    keras.mixed_precision.set_global_policy(precision)
    model = build_model(model_config, data["x_train"].shape[1:])

    stage = f"train_tuned@{run_key(name, seed)}" if tuned else f"train@{key}"
    tags = tracking.run_tags(stage) | {
        "optimizer": name,
        "seed": str(seed),
        "tuned": str(tuned).lower(),
    }
    with tracking.tracked_run(experiment_id, key, tags) as run:
        with timed(seconds, "mlflow_logging"):
            params = run_params(name, optimizer, model_config, train_config, model, data_summary)
            mlflow.log_params(
                params
                | {
                    "train.seed": seed,
                    "train.effective_precision": precision,
                    "runtime.intra_op_threads": threads.intra_op,
                    "runtime.inter_op_threads": threads.inter_op,
                }
            )
        checkpoint = None
        if train_config.resume:
            checkpoint = checkpoint_dir(key, {"params": params, "seed": seed, "data": data_summary})
        with timed(seconds, "fit"):
            tracker = fit_model(
                model, optimizer, data, train_config.epochs, train_config.batch_size, checkpoint
            )
        # The per-epoch metrics were logged during fit: count them as logging, not fitting.
        seconds["fit"] -= tracker.logging_seconds
        seconds["mlflow_logging"] += tracker.logging_seconds
        with timed(seconds, "mlflow_logging"):
            log_model(model, example=data["x_val"][:5])
            mlflow.log_metric("train_seconds", seconds["fit"])
        history = tracker.history
        last = history[-1]
        metrics = {
            "optimizer_class": type(optimizer).__name__,
            # As Keras holds it (float32), written the way it reads in params: 0.001.
            "learning_rate": float(str(np.float32(optimizer.get_config()["learning_rate"]))),
            "precision": precision,
            "threads": asdict(threads),
            "epochs": len(history),
            "loss": last["loss"],
            "accuracy": last["accuracy"],
            "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"],
            "train_seconds": round(seconds["fit"], 2),
            "mlflow_run_id": run.info.run_id,
        }
        # Outputs last, the metrics file last of all: a failure leaves no complete-looking set.
        with timed(seconds, "save_model"):
            save_model(model, MODELS_DIR / f"{key}.keras")
        write_text_atomic(HISTORY_DIR / f"{key}.csv", history_csv(history))
        rounded = {part: round(value, 3) for part, value in seconds.items()}
        write_json_atomic(TRAIN_METRICS_DIR / f"{key}.json", metrics | {"seconds": rounded})
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)  # the outputs are complete
    log.info("%s: val_accuracy %.4f in %.1f s", stage, last["val_accuracy"], seconds["fit"])


def main(argv: list[str]) -> None:
    usage = "usage: python -m stages.train <optimizer name from params.yaml> <seed> [--tuned]"
    tuned = "--tuned" in argv
    argv = [arg for arg in argv if arg != "--tuned"]
    if len(argv) != 2:
        raise ParamsError(usage)
    try:
        seed = int(argv[1])
    except ValueError:
        raise ParamsError(f"{usage}; got seed {argv[1]!r}") from None
    train(argv[0], seed, load_params(), tuned)


if __name__ == "__main__":
    run_stage(main)
