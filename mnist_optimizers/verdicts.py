"""Verdicts on pairs of optimizers that say what a user may conclude: one is better, they are
equivalent within a margin, or the seeds are too few to say, and then how many would do.

Welch's t-test (is there a difference?) and the two one-sided tests, TOST (is the difference
within +-margin?), both over seeds and both Holm-corrected over the pairs. Pure functions on
numbers; `tables` puts them into the significance table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from mnist_optimizers import stats

MAX_SEEDS = 1000  # seeds_needed gives up above this: the spread is too wide for the margin


@dataclass(frozen=True)
class Welch:
    difference: float  # mean(x) - mean(y)
    se: float  # standard error of the difference
    df: float  # Welch-Satterthwaite degrees of freedom


def welch(x: Sequence[float], y: Sequence[float]) -> Welch | None:
    """The difference of the means, its standard error and degrees of freedom; None when a
    side has fewer than two values or neither side has any spread (nothing to test)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2:
        return None
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy == 0:
        return None
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return Welch(float(x.mean() - y.mean()), math.sqrt(vx + vy), float(df))


def tost_p(x: Sequence[float], y: Sequence[float], margin: float) -> float:
    """The p-value of the two one-sided Welch tests that mean(x) - mean(y) lies within
    (-margin, margin): the larger of the two one-sided p-values. Small: equivalent. NaN when
    not testable."""
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    w = welch(x, y)
    if w is None:
        return math.nan
    p_lower = scipy_stats.t.sf((w.difference + margin) / w.se, w.df)  # H0: difference <= -margin
    p_upper = scipy_stats.t.cdf((w.difference - margin) / w.se, w.df)  # H0: difference >= margin
    return float(max(p_lower, p_upper))


def seeds_needed(
    x: Sequence[float], y: Sequence[float], margin: float, alpha: float, pairs: int
) -> float:
    """Seeds per optimizer at which a decision is certain if the spread stays as observed: the
    two-sided interval of the difference at ``alpha / pairs`` (Bonferroni, so that Holm over
    ``pairs`` pairs agrees) is at most one margin wide, so the difference either excludes 0
    (significant) or lies within +-margin (equivalent). NaN without a spread to go on; inf
    above MAX_SEEDS."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    sd = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    if sd == 0:
        return math.nan
    level = 1 - alpha / (2 * pairs)
    for n in range(2, MAX_SEEDS + 1):
        if scipy_stats.t.ppf(level, 2 * n - 2) * sd * math.sqrt(2 / n) <= margin / 2:
            return float(n)
    return math.inf


def verdict(difference: float, significant: bool, equivalent: bool) -> str:
    """One word for a pair A vs B: "equivalent" when the difference is shown to lie within
    the margin (even where it is also significant: real but smaller than the margin), else
    "better" (A) or "worse" where it is significant, else "inconclusive"."""
    if equivalent:
        return "equivalent"
    if significant:
        return "better" if difference > 0 else "worse"
    return "inconclusive"


def pair_verdicts(
    samples: Mapping[str, Sequence[float]], alpha: float, margin: float
) -> pd.DataFrame:
    """stats.pairwise_differences' table of every pair (Welch, Holm) with the equivalence
    test's p-value (`tost_p`, Holm-corrected in `tost_p_holm`), `equivalent`, the `verdict`,
    and for an inconclusive pair the `seeds_needed` per optimizer for a decision."""
    table = stats.pairwise_differences(samples, alpha)
    pairs = list(zip(table["a"], table["b"], strict=True))
    table["tost_p"] = [tost_p(samples[a], samples[b], margin) for a, b in pairs]
    table["tost_p_holm"] = stats.holm(list(table["tost_p"]))
    table["equivalent"] = table["tost_p_holm"] < alpha  # NaN compares False
    table["verdict"] = [
        verdict(d, bool(s), bool(e))
        for d, s, e in zip(table["difference"], table["significant"], table["equivalent"],
                           strict=True)  # fmt: skip
    ]
    testable = int(table["p_value"].notna().sum())
    table["seeds_needed"] = [
        seeds_needed(samples[a], samples[b], margin, alpha, testable)
        if v == "inconclusive" and testable else math.nan
        for (a, b), v in zip(pairs, table["verdict"], strict=True)
    ]
    return table
