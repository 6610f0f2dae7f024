"""Atomic writes, JSON and CSV, and the processed arrays.

Every output is written to a temporary file beside it and renamed into place, so a stage
that fails or is stopped leaves the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.paths import PROCESSED_DIR

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


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV (no index, `\\n` line ends) atomically."""
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))


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
                "rerun the preprocess stage: dvc repro --force preprocess"
            ) from None
    return arrays


def load_training_data(images: int | None = None) -> dict[str, np.ndarray]:
    """The processed training arrays (the first ``images`` of them, or all) and the whole
    validation set, keyed as ``fit.fit_model`` takes them."""
    x_train, y_train, x_val, y_val = load_arrays(
        PROCESSED_DIR, "x_train", "y_train", "x_val", "y_val"
    )
    return {
        "x_train": x_train[:images],
        "y_train": y_train[:images],
        "x_val": x_val,
        "y_val": y_val,
    }
