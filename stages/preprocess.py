"""Stage `preprocess@<workload>`: parse the workload's IDX files (data/raw/<workload>/), scale
to float32 in [0, 1], split, write .npy files to data/processed/<workload>/.

Applies `preprocess.subset` (the first N training and first N test images) and takes the
validation set as the last `preprocess.val_fraction` of the training set, exactly as Keras'
`validation_split` does, so results compare with the reference tutorial.

    dvc repro preprocess@mnist_cnn
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from mnist_optimizers import workloads
from mnist_optimizers.cli import run_stage, stage_args
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import atomic_path, write_json_atomic
from mnist_optimizers.idx import load_split
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import DATA_SUMMARY_NAME, processed_dir, raw_dir
from mnist_optimizers.sections.preprocess import PreprocessConfig, validate_preprocess

log = logging.getLogger(__name__)


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


def preprocess(
    raw_dir: Path, config: PreprocessConfig, workload: str, dataset: str
) -> tuple[dict[str, np.ndarray], dict]:
    """Return the arrays to write (x/y for train, val, test) and a summary of the data
    (``workload``'s, from data set ``dataset``)."""
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
        "workload": workload,
        "dataset": dataset,
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
    write_json_atomic(out_dir / DATA_SUMMARY_NAME, summary)


def main(argv: list[str]) -> None:
    params = load_params()
    (name,) = stage_args("preprocess", argv, ("workload",), params)
    config = validate_preprocess(params["preprocess"])
    dataset = workloads.workload(params, name).data
    arrays, summary = preprocess(raw_dir(name), config, name, dataset)
    write_arrays(processed_dir(name), arrays, summary)
    log.info("wrote %s: %s", processed_dir(name), summary["counts"])


if __name__ == "__main__":
    run_stage(main)
