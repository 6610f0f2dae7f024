"""Stage `preprocess`: IDX parsing and checks, float32 scaling, subset, Keras-style split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_optimizers import idx
from mnist_optimizers.files import load_arrays
from mnist_optimizers.paths import processed_dir
from stages import preprocess
from mnist_optimizers.sections.preprocess import PreprocessConfig

from .conftest import (
    WORKLOAD,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    idx_bytes,
    tiny_mnist_contents,
)


def write_raw(folder: Path, contents: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / name).write_bytes(gzip.compress(content))
    return folder


def raw_arrays(contents: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {
        name: idx.parse_idx(c, idx.IMAGE_MAGIC if "images" in name else idx.LABEL_MAGIC, name)
        for name, c in contents.items()
    }


def test_arrays_are_scaled_float32_split_like_keras(tmp_path: Path) -> None:
    contents = tiny_mnist_contents(n_train=200, n_test=50)
    arrays, summary = preprocess.preprocess(
        write_raw(tmp_path, contents), PreprocessConfig(0.1, None), "w", "mnist"
    )
    raw = raw_arrays(contents)
    assert arrays["x_train"].dtype == np.float32 and arrays["x_train"].shape == (180, 28, 28, 1)
    assert arrays["x_val"].shape == (20, 28, 28, 1) and arrays["x_test"].shape == (50, 28, 28, 1)
    assert 0.0 <= arrays["x_train"].min() and arrays["x_train"].max() == 1.0
    # The validation set is the last 10% of the training set, as validation_split=0.1.
    np.testing.assert_array_equal(arrays["y_val"], raw[TRAIN_LABELS][180:])
    np.testing.assert_allclose(arrays["x_val"][..., 0], raw[TRAIN_IMAGES][180:] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(arrays["y_test"], raw[TEST_LABELS])
    assert summary["counts"] == {"train": 180, "val": 20, "test": 50}
    assert set(summary["sha256"]) == {TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS}
    assert summary["workload"] == "w" and summary["dataset"] == "mnist"


def test_split_index_matches_keras_rounding() -> None:
    # Keras: split_at = floor(n * (1 - validation_split)).
    assert preprocess.split_train_val(60000, 0.1) == 54000
    assert preprocess.split_train_val(105, 0.1) == 94
    with pytest.raises(preprocess.PipelineError, match="empty training or validation set"):
        preprocess.split_train_val(1, 0.1)


def test_subset_keeps_the_first_images_of_train_and_test(tmp_path: Path) -> None:
    contents = tiny_mnist_contents(n_train=200, n_test=50)
    arrays, summary = preprocess.preprocess(
        write_raw(tmp_path, contents), PreprocessConfig(0.2, 100), "w", "mnist"
    )
    raw = raw_arrays(contents)
    assert summary["counts"] == {"train": 80, "val": 20, "test": 50}
    np.testing.assert_array_equal(arrays["y_val"], raw[TRAIN_LABELS][80:100])


def test_subset_larger_than_the_data_is_an_error(tmp_path: Path) -> None:
    raw = write_raw(tmp_path, tiny_mnist_contents(n_train=200, n_test=50))
    with pytest.raises(
        preprocess.PipelineError,
        match="preprocess.subset: 500 is larger than the 200 training images",
    ):
        preprocess.preprocess(raw, PreprocessConfig(0.1, 500), "w", "mnist")


def test_main_writes_npy_files_and_a_data_summary(processed: Path) -> None:
    names = sorted(p.name for p in processed_dir(WORKLOAD).iterdir())
    assert names == [
        "data.json",
        "x_test.npy",
        "x_train.npy",
        "x_val.npy",
        "y_test.npy",
        "y_train.npy",
        "y_val.npy",
    ]
    x_train, y_val = load_arrays(processed_dir(WORKLOAD), "x_train", "y_val")
    assert x_train.dtype == np.float32 and y_val.dtype == np.uint8
    assert json.loads((processed_dir(WORKLOAD) / "data.json").read_text())["counts"]["val"] == 20


def _bad(name: str, content: bytes | None) -> dict[str, bytes]:
    contents = tiny_mnist_contents(n_train=30, n_test=10)
    if content is None:
        del contents[name]
    else:
        contents[name] = content
    return contents


BAD_DATA = [  # (file, its content or None for missing, what the message says after the path)
    (
        TRAIN_IMAGES,
        b"\x00\x00\x08\x01" + (30).to_bytes(4, "big") + bytes(30),
        ": wrong magic number 0x00000801, expected 0x00000803",
    ),
    (
        TRAIN_IMAGES,
        idx_bytes(np.zeros((30, 27, 28), np.uint8)),
        ": images are (27, 28), expected (28, 28)",
    ),
    (TRAIN_LABELS, idx_bytes(np.zeros(29, np.uint8)), ": 29 labels for 30 images in"),
    (TEST_LABELS, idx_bytes(np.full(10, 10, np.uint8)), ": label 10 outside 0-9"),
    (TEST_IMAGES, b"", ": 0 bytes, too short for an IDX header"),
    (
        TEST_IMAGES,
        idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-5],
        ": header says (10, 28, 28) (7856 bytes) but the file has 7851 bytes",
    ),
    (TRAIN_IMAGES, idx_bytes(np.zeros((0, 28, 28), np.uint8)), ": holds no images"),
    (TRAIN_LABELS, None, ": not found; run the download stage first"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_DATA)
def test_malformed_input_gives_one_clear_message_naming_the_file(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    raw = write_raw(tmp_path / "raw", _bad(name, content))
    with pytest.raises(idx.DataError) as error:
        preprocess.preprocess(raw, PreprocessConfig(0.1, None), "w", "mnist")
    assert str(error.value).startswith(f"{raw / name}{message}")


def test_a_file_that_is_not_gzip_is_named(tmp_path: Path) -> None:
    raw = write_raw(tmp_path, tiny_mnist_contents(n_train=30, n_test=10))
    (raw / TEST_LABELS).write_bytes(b"<html>404</html>")
    with pytest.raises(idx.DataError, match=f"{TEST_LABELS}: not a valid gzip file"):
        preprocess.preprocess(raw, PreprocessConfig(0.1, None), "w", "mnist")
