"""Atomic writes: an output is the old file or the whole new one, never half of one."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import (
    WriteError,
    atomic_path,
    load_arrays,
    load_training_data,
    write_text_atomic,
)

from .conftest import PROJECT_ROOT


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.keras"
    target.write_text("old model")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".keras") as tmp:
        tmp.write_text("half a mod")
        raise RuntimeError("disk full")
    assert target.read_text() == "old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_a_full_disk_fails_with_one_message_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A real OS write failure: the process may write at most 4 KiB per file (RLIMIT_FSIZE,
    as a nearly full disk would allow), and the new metrics file is 10 KiB."""
    target = tmp_path / "metrics.json"
    target.write_text('{"val_accuracy": 0.99}\n')
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from mnist_optimizers.errors import PipelineError\n"
        "from mnist_optimizers.files import write_json_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    write_json_atomic(Path(sys.argv[1]), {'history': 'x' * 10000})\n"
        "except PipelineError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, check=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.strip() == (
        f"{target}: cannot write it: File too large; the previous file is unchanged"
    )
    assert target.read_text() == '{"val_accuracy": 0.99}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_model_that_cannot_be_saved_leaves_the_old_one(tmp_path: Path, monkeypatch) -> None:
    import keras

    from mnist_optimizers.model import save_model

    target = tmp_path / "adam-42.keras"
    target.write_bytes(b"the previous model")

    def save_half(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_half)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(WriteError) as error:
        save_model(model, target, {"run": "adam-42"})
    assert str(error.value) == (
        f"{target}: cannot write it: No space left on device; the previous file is unchanged"
    )
    assert target.read_bytes() == b"the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["adam-42.keras"]


def test_processed_arrays_are_never_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "x_test.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match="refused, not a plain numeric array"):
        load_arrays(tmp_path, "x_test")
    with pytest.raises(PipelineError, match="y_test.npy: not found; run the preprocess stage"):
        load_arrays(tmp_path, "y_test")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    """A teammate (or `mlflow ui` run as another user) reads the outputs as the umask allows:
    the temporary file's 0600 is not what lands."""
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "report.html", "<p>")
        with atomic_path(tmp_path / "model.keras", suffix=".keras") as tmp:
            tmp.write_bytes(b"weights")
    finally:
        os.umask(old)
    for name in ("report.html", "model.keras"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


PROCESSED = {
    "x_train": np.zeros((6, 28, 28, 1), np.float32),
    "y_train": np.arange(6, dtype=np.uint8),
    "x_val": np.full((2, 28, 28, 1), 0.5, np.float32),
    "y_val": np.array([1, 9], np.uint8),
}


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("x_train", np.zeros((6, 28, 28, 1), np.uint8) + 255,
         r"x_train.npy: expected float32 images of shape \(N, height, width, 1\), got uint8"),
        ("x_train", np.full((6, 28, 28, 1), 255.0, np.float32),
         r"x_train.npy: pixel values from 255.0 to 255.0, expected images scaled to \[0, 1\]"),
        ("x_val", np.full((2, 28, 28, 1), np.nan, np.float32), r"x_val.npy: pixel values from nan"),
        ("x_train", np.zeros((6, 28, 28), np.float32), r"got float32 \(6, 28, 28\)"),
        ("y_train", np.arange(5, dtype=np.uint8), r"y_train.npy: expected 6 integer labels"),
        ("y_val", np.array([0.0, 1.0]), r"y_val.npy: expected 2 integer labels .* got float64"),
        ("y_val", np.array([1, 12], np.int64), r"y_val.npy: labels from 1 to 12, expected 0 to 9"),
        ("y_train", np.array([-1, 0, 1, 2, 3, 4]), r"labels from -1 to 4, expected 0 to 9"),
    ],
)  # fmt: skip
def test_processed_arrays_that_preprocess_would_not_write_are_refused(
    project: Path, name: str, array: np.ndarray, message: str
) -> None:
    folder = project / "data" / "processed" / "mnist_cnn"
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in (PROCESSED | {name: array}).items():
        np.save(folder / f"{key}.npy", value)
    with pytest.raises(PipelineError, match=message):
        load_training_data("mnist_cnn", num_classes=10)
