"""Atomic writes: an output is the old file or the whole new one, never half of one."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import WriteError, atomic_path, load_arrays, write_text_atomic

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
        save_model(model, target)
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
