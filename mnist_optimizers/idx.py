"""MNIST's IDX files: read a gzipped file, parse it, and check an images/labels pair.

A file that is missing, truncated, not gzip, or not the IDX data it should be is a
DataError that names it and says what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from mnist_optimizers.errors import PipelineError

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


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
