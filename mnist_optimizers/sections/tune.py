"""The `tune` section of params.yaml: its settings and their validation, read by
stages/tune.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import (
    check_keys,
    finite_number,
    positive_int,
    seed,
)


SPACES = ("learning_rate", "full")
# What `space: full` searches besides the learning rate, log-scaled as Choi et al. (2019)
# search them: a decay as 1 minus it, so that 0.9, 0.99 and 0.999 are equally far apart.
# Keras' argument -> its range in `tune.ranges`.
RANGE_OF = {
    "momentum": "one_minus_momentum",
    "beta_1": "one_minus_beta_1",
    "beta_2": "one_minus_beta_2",
    "rho": "one_minus_rho",
    "epsilon": "epsilon",
}
RANGE_KEYS = tuple(RANGE_OF.values())
DEFAULT_RANGES = {
    "one_minus_momentum": (0.001, 1.0),
    "one_minus_beta_1": (0.001, 1.0),
    "one_minus_beta_2": (0.0001, 1.0),
    "one_minus_rho": (0.0001, 1.0),
    "epsilon": (1e-10, 1.0),
}


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
    space: str = "learning_rate"  # or "full": the optimizer's other hyperparameters too
    trials: int = 16  # the budget of a full-space search (the grid's is `points`)
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))


def validate_tune(section: Any) -> TuneConfig:
    """Check the `tune` section: the learning-rate grid, each trial's budget, the pruning."""
    required = ("low", "high", "points", "images", "epochs", "seed")
    keys = (*required, "prune", "reduction_factor", "min_epochs", "space", "trials", "ranges")
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
    space = section.get("space", TuneConfig.space)
    if space not in SPACES:
        raise ParamsError(f"tune.space: expected one of {', '.join(SPACES)}, got {shown(space)}")
    trials = positive_int(section.get("trials", TuneConfig.trials), "tune.trials")
    if trials < 2:
        raise ParamsError(f"tune.trials: expected at least 2, got {trials}")
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
        space=space,
        trials=trials,
        ranges=validate_ranges(section.get("ranges", {})),
    )


def validate_ranges(section: Any) -> dict[str, tuple[float, float]]:
    """Check `tune.ranges`: for each key given, [low, high] with 0 < low < high, and high at
    most 1 for a `one_minus_` one (a decay of 0 at most, never below); the others keep
    their defaults."""
    if section is None:
        section = {}
    check_keys(section, RANGE_KEYS, "tune.ranges")
    ranges = dict(DEFAULT_RANGES)
    for key, given in section.items():
        where = f"tune.ranges.{key}"
        if not isinstance(given, list) or len(given) != 2:
            raise ParamsError(f"{where}: expected [low, high], got {shown(given)}")
        low, high = (finite_number(value, where) for value in given)
        if not 0 < low < high:
            raise ParamsError(f"{where}: expected 0 < low < high, got {shown(given)}")
        if key.startswith("one_minus_") and high > 1:
            raise ParamsError(
                f"{where}: expected high at most 1 (1 - the decay, which is 0 at least), "
                f"got {shown(given)}"
            )
        ranges[key] = (low, high)
    return ranges
