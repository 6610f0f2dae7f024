"""Stage `preprocess`: parse the IDX files, scale to float32 in [0, 1], split, write .npy.

Applies `preprocess.subset` (the first N training and first N test images) and takes the
validation set as the last `preprocess.val_fraction` of the training set, exactly as Keras'
`validation_split` does, so results compare with the reference tutorial.

    dvc repro preprocess
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from stages.common import (
    PROCESSED_DIR,
    RAW_DIR,
    PipelineError,
    PreprocessConfig,
    atomic_path,
    load_params,
    run_stage,
    validate_preprocess,
    write_json_atomic,
)

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

log = logging.getLogger(__name__)


class DataError(PipelineError):
    """An input file is missing, truncated or not the IDX data it should be."""


def read_gzip(path: Path) -> bytes:
    """Return the decompressed content of ``path``, with a clear error if unreadable."""
    try:
        return gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the download stage first") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from None


def parse_idx(content: bytes, magic: int, name: str) -> np.ndarray:
    """Parse IDX bytes of unsigned bytes with the given magic number into a uint8 array."""
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{name}: {len(content)} bytes, too short for an IDX header")
    found = int.from_bytes(content[:4], "big")
    if found != magic:
        raise DataError(f"{name}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + math.prod(dims)
    if len(content) != expected:
        raise DataError(
            f"{name}: header says {dims} ({expected} bytes) but the file has {len(content)} bytes"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims)


def load_split(
    images_path: Path, labels_path: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Load one images/labels pair, checked; return uint8 images, labels and content SHA-256s."""
    image_bytes, label_bytes = read_gzip(images_path), read_gzip(labels_path)
    images = parse_idx(image_bytes, IMAGE_MAGIC, str(images_path))
    labels = parse_idx(label_bytes, LABEL_MAGIC, str(labels_path))
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{images_path}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {labels.max()} outside 0-{NUM_CLASSES - 1}")
    checksums = {
        images_path.name: hashlib.sha256(image_bytes).hexdigest(),
        labels_path.name: hashlib.sha256(label_bytes).hexdigest(),
    }
    return images, labels, checksums


def scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], with no float64 intermediate."""
    scaled = images.astype(np.float32)[..., np.newaxis]
    scaled /= np.float32(255.0)
    return scaled


def split_train_val(n: int, val_fraction: float) -> int:
    """Index where validation starts: the last `val_fraction` of n, as Keras' validation_split."""
    split_at = int(math.floor(n * (1.0 - val_fraction)))
    if split_at < 1 or split_at >= n:
        raise PipelineError(
            f"preprocess.val_fraction: {val_fraction} of {n} training images leaves an empty "
            f"training or validation set"
        )
    return split_at


def preprocess(raw_dir: Path, config: PreprocessConfig) -> tuple[dict[str, np.ndarray], dict]:
    """Return the arrays to write (x/y for train, val, test) and a summary of the data."""
    x_train, y_train, train_sums = load_split(
        raw_dir / "train-images-idx3-ubyte.gz", raw_dir / "train-labels-idx1-ubyte.gz"
    )
    x_test, y_test, test_sums = load_split(
        raw_dir / "t10k-images-idx3-ubyte.gz", raw_dir / "t10k-labels-idx1-ubyte.gz"
    )
    if config.subset is not None:
        if config.subset > len(x_train):
            raise PipelineError(
                f"preprocess.subset: {config.subset} is larger than the {len(x_train)} "
                f"training images; use null for all of them"
            )
        x_train, y_train = x_train[: config.subset], y_train[: config.subset]
        x_test, y_test = x_test[: config.subset], y_test[: config.subset]
    split_at = split_train_val(len(x_train), config.val_fraction)
    arrays = {
        "x_train": scale_images(x_train[:split_at]),
        "y_train": y_train[:split_at].copy(),
        "x_val": scale_images(x_train[split_at:]),
        "y_val": y_train[split_at:].copy(),
        "x_test": scale_images(x_test),
        "y_test": y_test.copy(),
    }
    summary = {
        "counts": {"train": split_at, "val": len(x_train) - split_at, "test": len(x_test)},
        "subset": config.subset,
        "val_fraction": config.val_fraction,
        "sha256": train_sums | test_sums,
    }
    return arrays, summary


def write_arrays(out_dir: Path, arrays: dict[str, np.ndarray], summary: dict) -> None:
    """Write each array as out_dir/<name>.npy and the summary as out_dir/data.json, atomically."""
    for name, array in arrays.items():
        with atomic_path(out_dir / f"{name}.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    write_json_atomic(out_dir / "data.json", summary)


def main(argv: list[str]) -> None:
    config = validate_preprocess(load_params()["preprocess"])
    arrays, summary = preprocess(RAW_DIR, config)
    write_arrays(PROCESSED_DIR, arrays, summary)
    log.info("wrote %s: %s", PROCESSED_DIR, summary["counts"])


if __name__ == "__main__":
    run_stage(main)
