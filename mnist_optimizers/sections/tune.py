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
    seed: int  # the models' initial weights and the order the grid is tried in
    prune: bool = True  # stop weak trials early by successive halving
    reduction_factor: int = 4  # past each rung, the best 1/reduction_factor go on
    min_epochs: float = 0.5  # the first rung, in epochs (a fraction judges mid-epoch)


def validate_tune(section: Any) -> TuneConfig:
    """Check the `tune` section: the learning-rate grid, each trial's budget, the pruning."""
    required = ("low", "high", "points", "images", "epochs", "seed")
    keys = (*required, "prune", "reduction_factor", "min_epochs")
    check_keys(section, keys, "tune", required)
    low = finite_number(section["low"], "tune.low")
    high = finite_number(section["high"], "tune.high")
    if not 0 < low < high:
        raise ParamsError(
            f"tune: expected 0 < low < high, got low {shown(low)}, high {shown(high)}"
        )
    points = positive_int(section["points"], "tune.points")
    if points < 2:
        raise ParamsError(f"tune.points: expected at least 2, got {points}")
    epochs = positive_int(section["epochs"], "tune.epochs")
    prune = section.get("prune", TuneConfig.prune)
    if not isinstance(prune, bool):
        raise ParamsError(f"tune.prune: expected true or false, got {shown(prune)}")
    reduction_factor = positive_int(
        section.get("reduction_factor", TuneConfig.reduction_factor), "tune.reduction_factor"
    )
    if reduction_factor < 2:
        raise ParamsError(f"tune.reduction_factor: expected at least 2, got {reduction_factor}")
    given = section.get("min_epochs", TuneConfig.min_epochs)
    min_epochs = finite_number(given, "tune.min_epochs")
    if min_epochs <= 0:
        raise ParamsError(f"tune.min_epochs: expected a number above 0, got {shown(given)}")
    if prune and min_epochs >= epochs:
        raise ParamsError(
            f"tune.min_epochs: the first rung must come before the last epoch to prune "
            f"anything: expected less than tune.epochs ({epochs}), got {shown(given)}; "
            "or set tune.prune: false"
        )
    return TuneConfig(
        low=low,
        high=high,
        points=points,
        images=positive_int(section["images"], "tune.images"),
        epochs=epochs,
        seed=seed(section["seed"], "tune.seed"),
        prune=prune,
        reduction_factor=reduction_factor,
        min_epochs=min_epochs,
    )
