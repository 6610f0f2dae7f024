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
from collections.abc import Mapping, Sequence

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


# The two clocks a time to target is measured on: training steps (machine-independent) and
# wall seconds (this machine's).
UNITS = ("steps", "seconds")
TAUS = tuple(np.round(np.linspace(1.0, MAX_RATIO, 61), 4))  # where rho is drawn and tabled


def target_column(unit: str, target: float) -> str:
    """The runs table's column of ``unit`` to ``target``: steps_to_97, seconds_to_97."""
    return f"{unit}_to_{100 * target:g}"


def times(runs: Mapping[str, pd.DataFrame], targets: Mapping[str, float], setting: str,
          unit: str) -> pd.DataFrame:  # fmt: skip
    """One row per workload (the keys of ``runs``, each its runs table), one column per
    optimizer: the median over seeds of the ``unit`` to the workload's target in ``setting``,
    inf where half or more of the seeds never reached it (or diverged)."""
    rows = {}
    for workload, table in runs.items():
        rows_of = table[table["setting"] == setting]
        column = rows_of[target_column(unit, targets[workload])].astype(float).fillna(math.inf)
        rows[workload] = {
            optimizer: median_time(list(group))
            for optimizer, group in column.groupby(rows_of["optimizer"], sort=False)
        }
    return pd.DataFrame(rows).T.rename_axis("workload")


def score_table(runs: Mapping[str, pd.DataFrame], targets: Mapping[str, float],
                settings: Sequence[str]) -> pd.DataFrame:  # fmt: skip
    """Per setting and optimizer: the score on steps and on seconds, and per workload the
    median steps to its target and the ratio to the fastest (inf: never)."""
    frames = []
    for setting in settings:
        steps = times(runs, targets, setting, "steps")
        frame = pd.DataFrame({"setting": setting, "optimizer": steps.columns})
        for unit in UNITS:
            ratios = performance_ratios(times(runs, targets, setting, unit))
            frame[f"score_{unit}"] = scores(ratios).round(4).to_numpy()
        ratios = performance_ratios(steps)
        for workload in steps.index:
            frame[f"{workload}_steps"] = steps.loc[workload].to_numpy()
            frame[f"{workload}_ratio"] = ratios.loc[workload].round(3).to_numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def profiles(runs: Mapping[str, pd.DataFrame], targets: Mapping[str, float], setting: str,
             unit: str = "steps") -> pd.DataFrame:  # fmt: skip
    """rho(tau) of every optimizer in ``setting``, at TAUS."""
    return profile(performance_ratios(times(runs, targets, setting, unit)), TAUS)
