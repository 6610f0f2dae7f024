"""Atomic writes, JSON and CSV, and the processed arrays.

Every output is written to a temporary file beside it and renamed into place, so a stage
that fails or is stopped leaves the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.paths import processed_dir

if TYPE_CHECKING:
    import pandas as pd


class WriteError(PipelineError):
    """An output could not be written (a full disk, a read-only folder); nothing replaced."""

    def __init__(self, path: Path, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        super().__init__(
            f"{path}: cannot write it: {reason}; "
            + ("the previous file is unchanged" if path.exists() else "nothing was written")
        )


# Every output this process has put in place, in order: what a stage stopped midway says
# it changed (cli.run_stage).
WRITTEN: list[Path] = []


def new_file_mode() -> int:
    """The mode the umask gives a new file (0644 under umask 022), as `open` would."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "", output: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    A failure (or Ctrl-C) removes the temporary file, so ``path`` is either the old file or
    the complete new one, never half-written. A full disk or any other OS error becomes
    one WriteError that names the file. ``suffix`` keeps an extension that a writer needs
    (Keras saves only to names ending in `.keras`). ``output=False`` marks a file that is
    not one of the stage's outputs (a checkpoint): it is left out of WRITTEN.
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
            os.fchmod(handle.fileno(), new_file_mode())  # mkstemp made it 0600
        os.replace(tmp, path)
        if output:
            WRITTEN.append(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(
    path: Path, write: Callable[[IO[Any]], None], binary: bool = False, output: bool = True
) -> None:
    """Call ``write(handle)`` on a temporary file, then move it onto ``path``."""
    with (
        atomic_path(path, output=output) as tmp,
        open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle,
    ):
        write(handle)


def copy_atomic(source: Path, path: Path) -> None:
    """Copy the file ``source`` to ``path`` atomically, as an output of the stage."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        try:
            shutil.copyfile(source, tmp)
        except FileNotFoundError:
            raise PipelineError(
                f"{source}: not found; run the stage that writes it (dvc repro)"
            ) from None


def write_text_atomic(path: Path, text: str, output: bool = True) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(path, lambda handle: handle.write(text), output=output)


def write_json_atomic(path: Path, data: Any, output: bool = True) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", output=output)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV (no index, `\\n` line ends) atomically."""
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))


def read_json(path: Path, *keys: str) -> Any:
    """Read a JSON file written by an earlier stage, with a clear error if it is missing or,
    given ``keys``, is not an object holding each of them."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(
            f"{path}: not found; run the stage that writes it (dvc repro)"
        ) from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in keys if not isinstance(content, dict) or k not in content]
    if missing:
        raise PipelineError(
            f"{path}: {', '.join(missing)} missing: not as the stage that writes it left it; "
            "rerun that stage (dvc repro --force <stage>)"
        )
    return content


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV file written by an earlier stage, with a clear error if it is missing."""
    import pandas as pd

    if not Path(path).exists():
        raise PipelineError(f"{path}: not found; run the stage that writes it (dvc repro)")
    return pd.read_csv(path)


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
                "rerun its workload's preprocess stage: dvc repro --force preprocess@<workload>"
            ) from None
    return arrays


def load_processed(
    workload: str, split: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The processed images and labels of ``split`` (train, val, test) of ``workload``'s data,
    checked to be what the preprocess stage writes: float32 images (N, height, width, 1)
    scaled to [0, 1], N integer labels from 0 (below ``num_classes`` when it is given)."""
    folder = processed_dir(workload)
    x, y = load_arrays(folder, f"x_{split}", f"y_{split}")
    x_path, y_path = folder / f"x_{split}.npy", folder / f"y_{split}.npy"
    rerun = f"rerun the preprocess stage: dvc repro --force preprocess@{workload}"
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[-1] != 1 or 0 in x.shape:
        raise PipelineError(
            f"{x_path}: expected float32 images of shape (N, height, width, 1), got "
            f"{x.dtype} {x.shape}; {rerun}"
        )
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise PipelineError(
            f"{x_path}: pixel values from {x.min()} to {x.max()}, expected images scaled to "
            f"[0, 1]; {rerun}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
        raise PipelineError(
            f"{y_path}: expected {len(x)} integer labels (one per image of {x_path}), got "
            f"{y.dtype} {y.shape}; {rerun}"
        )
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        expected = (
            f"0 to {num_classes - 1} (workloads.{workload}.model.num_classes: {num_classes})"
            if num_classes
            else "0 or more"
        )
        raise PipelineError(f"{y_path}: labels from {y.min()} to {y.max()}, expected {expected}")
    return x, y


def load_training_data(
    workload: str, num_classes: int, images: int | None = None
) -> dict[str, np.ndarray]:
    """``workload``'s processed training arrays (the first ``images`` of them, or all) and
    the whole validation set, checked (``load_processed``), keyed as ``fit.fit_model`` takes
    them."""
    x_train, y_train = load_processed(workload, "train", num_classes)
    x_val, y_val = load_processed(workload, "val", num_classes)
    return {
        "x_train": x_train[:images],
        "y_train": y_train[:images],
        "x_val": x_val,
        "y_val": y_val,
    }
