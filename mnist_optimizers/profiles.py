"""AlgoPerf's performance profiles: an optimizer scored across workloads by how its time to each
workload's validation target compares with the fastest optimizer's there.

For optimizer o and workload w, t(o, w) is the time (training steps, which no machine changes,
or seconds) to the target: the median over seeds, a seed that never reached it counting as
infinite. The performance ratio r(o, w) = t(o, w) / min over o' of t(o', w) is 1 for the
fastest and infinite where o never reached the target. The profile rho_o(tau) is the fraction
of workloads whose ratio is at most tau, and the score is its integral from 1 to
MAX_RATIO divided by MAX_RATIO - 1 (1: the fastest on every workload; 0: never within
MAX_RATIO times the fastest). Dahl et al., "Benchmarking Neural Network Training Algorithms"
(2023), section 4.5; Dolan and Moré (2002).

Pure functions on tables; the stages read and write the files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

MAX_RATIO = 4.0  # AlgoPerf's r_max: a ratio above it earns nothing


def median_time(times: Sequence[float]) -> float:
    """The median over seeds of the times to a target, ``math.inf`` for a seed that never
    reached it: infinite when half or more of the seeds never did."""
    if not times:
        raise ValueError("no seed to take the median of")
    return float(np.median(np.asarray(times, dtype=float)))


def performance_ratios(times: pd.DataFrame) -> pd.DataFrame:
    """``times``: one row per workload, one column per optimizer, the time to the workload's
    target (inf: never reached). Each time divided by its row's fastest; a workload that no
    optimizer reached is infinite for all."""
    fastest = times.min(axis=1)
    ratios = times.div(fastest, axis=0)
    ratios.loc[~np.isfinite(fastest)] = math.inf  # inf / inf: no one reached it
    return ratios


def profile(ratios: pd.DataFrame, taus: Sequence[float]) -> pd.DataFrame:
    """rho(tau) per optimizer: the fraction of workloads (rows of ``ratios``) whose ratio is at
    most tau; one row per tau, one column per optimizer."""
    rows = {tau: (ratios <= tau).mean(axis=0) for tau in taus}
    return pd.DataFrame(rows).T.rename_axis("tau")


def scores(ratios: pd.DataFrame, max_ratio: float = MAX_RATIO) -> pd.Series:
    """The integral of rho from 1 to ``max_ratio``, divided by ``max_ratio`` - 1, per optimizer.
    rho is a step function: a workload of ratio r counts from tau = r on, so it adds
    (max_ratio - r) / (max_ratio - 1) / (number of workloads), or nothing where r > max_ratio."""
    credit = (max_ratio - ratios.clip(lower=1.0)).clip(lower=0.0) / (max_ratio - 1.0)
    return credit.mean(axis=0).rename("score")
