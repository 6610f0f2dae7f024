"""Statistics of a fair comparison: results over seeds with a confidence interval, which
differences between optimizers are significant, the best learning rate of a grid, and the
time an optimizer takes to reach a validation target.

Pure functions on numbers and tables; the stages read and write the files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import is_number

DEFAULT_TARGETS = (0.98, 0.97)  # validation accuracies to time; 0.97 is AlgoPerf's MNIST target


@dataclass(frozen=True)
class SeedSummary:
    """One metric of one optimizer over its seeds."""

    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); NaN for one seed
    ci_low: float  # Student-t confidence interval of the mean; NaN for one seed
    ci_high: float


def summarize_seeds(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, standard deviation and the t-interval of the mean of ``values`` (one per seed)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("no values to summarize")
    mean = float(array.mean())
    if array.size < 2:
        return SeedSummary(1, mean, math.nan, math.nan, math.nan)
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, array.size - 1)) * std / math.sqrt(array.size)
    return SeedSummary(int(array.size), mean, std, mean - half, mean + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given; NaN stays NaN and is not counted."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[i] = running
    return adjusted


def pairwise_differences(
    samples: Mapping[str, Sequence[float]], alpha: float = 0.05
) -> pd.DataFrame:
    """Every pair of optimizers: the difference of their means, Welch's t-test p-value, the
    Holm-adjusted p-value over all pairs, and whether the difference is significant at
    ``alpha``. A pair is not testable (NaN, not significant) with fewer than two seeds on a
    side or no spread on either."""
    rows = []
    for a, b in combinations(samples, 2):
        x, y = np.asarray(samples[a], float), np.asarray(samples[b], float)
        p = math.nan
        if len(x) >= 2 and len(y) >= 2 and (x.std() > 0 or y.std() > 0):
            p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
        rows.append({"a": a, "b": b, "difference": float(x.mean() - y.mean()), "p_value": p})
    table = pd.DataFrame(rows, columns=["a", "b", "difference", "p_value"])
    table["p_holm"] = holm(list(table["p_value"]))
    table["significant"] = table["p_holm"] < alpha  # NaN compares False
    return table


def log_grid(low: float, high: float, points: int) -> list[float]:
    """``points`` learning rates evenly spaced in log between ``low`` and ``high``, rounded to
    three significant digits so that they read well as params (0.00316, not 0.0031622...)."""
    if not 0 < low < high or points < 2:
        raise ValueError(f"need 0 < low < high and points >= 2, got {low}, {high}, {points}")
    return [float(f"{value:.3g}") for value in np.geomspace(low, high, points)]


@dataclass(frozen=True)
class TimeToTarget:
    epoch: int  # the first epoch that ended at or above the target
    seconds: float  # wall seconds of training and validation up to the end of that epoch


def time_to_target(history: pd.DataFrame, target: float) -> TimeToTarget | None:
    """When validation accuracy first reached ``target`` in a per-epoch history (columns
    `epoch`, `val_accuracy`, `epoch_seconds`); None when it never did."""
    history = history.sort_values("epoch")
    reached = history.index[history["val_accuracy"] >= target]
    if len(reached) == 0:
        return None
    epoch = int(history.loc[reached[0], "epoch"])
    seconds = float(history.loc[history["epoch"] <= epoch, "epoch_seconds"].sum())
    return TimeToTarget(epoch, seconds)


def validate_targets(value: Any, key: str = "evaluate.targets") -> tuple[float, ...]:
    """Check a non-empty list of distinct validation accuracies to time, each in (0, 1]."""
    if (
        not isinstance(value, list)
        or not value
        or not all(is_number(t) and 0 < t <= 1 for t in value)
        or len(set(value)) != len(value)
    ):
        raise ParamsError(
            f"{key}: expected a non-empty list of distinct accuracies in (0, 1], got {shown(value)}"
        )
    return tuple(float(t) for t in value)


def validate_confidence(value: Any, key: str = "evaluate.confidence") -> float:
    """Check a confidence level, a number in (0, 1)."""
    if not is_number(value) or not 0 < value < 1:
        raise ParamsError(f"{key}: expected a number in (0, 1), got {shown(value)}")
    return float(value)
