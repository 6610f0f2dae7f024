"""The `tune` section of params.yaml: its settings and their validation, read by
stages/tune.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import (
    check_keys,
    finite_number,
    positive_int,
    seed,
)


@dataclass(frozen=True)
class TuneConfig:
    low: float  # the grid of learning rates: `points` values, log-spaced from low to high
    high: float
    points: int
    images: int  # the budget of each trial: the first `images` training images ...
    epochs: int  # ... for `epochs` epochs, judged on the whole validation split
    seed: int


def validate_tune(section: Any) -> TuneConfig:
    """Check the `tune` section: the learning-rate grid and each trial's budget."""
    keys = ("low", "high", "points", "images", "epochs", "seed")
    check_keys(section, keys, "tune", keys)
    low = finite_number(section["low"], "tune.low")
    high = finite_number(section["high"], "tune.high")
    if not 0 < low < high:
        raise ParamsError(
            f"tune: expected 0 < low < high, got low {shown(low)}, high {shown(high)}"
        )
    points = positive_int(section["points"], "tune.points")
    if points < 2:
        raise ParamsError(f"tune.points: expected at least 2, got {points}")
    return TuneConfig(
        low=low,
        high=high,
        points=points,
        images=positive_int(section["images"], "tune.images"),
        epochs=positive_int(section["epochs"], "tune.epochs"),
        seed=seed(section["seed"], "tune.seed"),
    )
