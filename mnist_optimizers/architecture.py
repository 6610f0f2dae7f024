"""A workload's `model` entry (workloads.<name>.model in params.yaml): what sizes its network,
checked without Keras (the data stages read the workloads too). A model is conv blocks (Conv2D
layers, then a max pool), then dense layers, then a softmax: without conv blocks a multilayer
perceptron, without dense units too, logistic regression. mnist_optimizers/model.py builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.idx import IMAGE_SHAPE, NUM_CLASSES
from mnist_optimizers.params import check_keys, int_list, positive_int


@dataclass(frozen=True)
class ModelConfig:
    conv_blocks: tuple[tuple[int, ...], ...]  # filters of each block's Conv2D layers
    kernel_size: int
    pool_size: int
    dense_units: tuple[int, ...]
    num_classes: int


def validate_model(section: Any) -> ModelConfig:
    """Check the `model` section that sizes the CNN."""
    keys = ("conv_blocks", "kernel_size", "pool_size", "dense_units", "num_classes")
    check_keys(section, keys, "model", keys)
    blocks = section["conv_blocks"]
    if not isinstance(blocks, list):  # [] : no convolution, a multilayer perceptron
        raise ParamsError(
            f"model.conv_blocks: expected a list of lists of filters, got {shown(blocks)}"
        )
    config = ModelConfig(
        conv_blocks=tuple(int_list(b, f"model.conv_blocks[{i}]") for i, b in enumerate(blocks)),
        kernel_size=positive_int(section["kernel_size"], "model.kernel_size"),
        pool_size=positive_int(section["pool_size"], "model.pool_size"),
        dense_units=int_list(section["dense_units"], "model.dense_units", empty=True),
        num_classes=positive_int(section["num_classes"], "model.num_classes"),
    )
    if config.num_classes < NUM_CLASSES:
        raise ParamsError(
            f"model.num_classes: MNIST has {NUM_CLASSES} digits, got {config.num_classes}"
        )
    check_geometry(config, IMAGE_SHAPE)
    check_size(config, IMAGE_SHAPE, psutil.virtual_memory().total)
    return config


# Bytes a float32 parameter takes in training: itself, its gradient, and up to three
# optimizer slots (Adam's two moments, an EMA copy).
TRAINING_BYTES_PER_PARAMETER = 4 * 5


def parameter_counts(config: ModelConfig, image_shape: tuple[int, int]) -> dict[str, int]:
    """The trainable parameters of each layer, by the params key that sizes it."""
    side, channels, counts = min(image_shape), 1, {}
    for i, filters in enumerate(config.conv_blocks):
        for j, f in enumerate(filters):
            counts[f"model.conv_blocks[{i}][{j}]"] = (config.kernel_size**2 * channels + 1) * f
            side, channels = side - (config.kernel_size - 1), f
        side //= config.pool_size
    inputs = side * side * channels
    for i, units in enumerate(config.dense_units):
        counts[f"model.dense_units[{i}]"] = (inputs + 1) * units
        inputs = units
    counts["model.num_classes"] = (inputs + 1) * config.num_classes
    return counts


def check_size(config: ModelConfig, image_shape: tuple[int, int], memory: int) -> None:
    """Refuse, before Keras allocates it, a model whose training needs more than ``memory``
    bytes for its parameters alone; name the layer that holds the most."""
    counts = parameter_counts(config, image_shape)
    total = sum(counts.values())
    if total * TRAINING_BYTES_PER_PARAMETER > memory:
        key = max(counts, key=counts.__getitem__)
        raise ParamsError(
            f"{key}: the model has {total:,} parameters ({counts[key]:,} in this layer), "
            f"{total * TRAINING_BYTES_PER_PARAMETER / 2**30:,.1f} GiB to train, more than "
            f"this machine's {memory / 2**30:.1f} GiB of memory: make it smaller"
        )


def check_geometry(config: ModelConfig, image_shape: tuple[int, int]) -> None:
    """Each block's Conv2D layers ('valid': a side shrinks by kernel_size - 1) and max pool
    (a side is divided by pool_size) must leave at least one pixel."""
    side = min(image_shape)
    for i, filters in enumerate(config.conv_blocks):
        side -= len(filters) * (config.kernel_size - 1)
        if side < config.pool_size:
            raise ParamsError(
                f"model: {image_shape[0]}x{image_shape[1]} images shrink to nothing in "
                f"conv_blocks[{i}] (kernel_size {config.kernel_size}, pool_size "
                f"{config.pool_size}); use a smaller kernel or pool, or fewer layers"
            )
        side //= config.pool_size


