"""AlgoPerf's performance profiles and scores (mnist_optimizers/profiles.py) against a hand
computation and against the integral of the profile taken numerically."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mnist_optimizers import profiles

INF = math.inf

# Steps to each workload's target: adam fastest on the CNN, sgd on the MLP, nobody reaches the
# target of the third workload, and adagrad never reaches the MLP's.
TIMES = pd.DataFrame(
    {"sgd": [300.0, 100.0, INF], "adam": [100.0, 150.0, INF], "adagrad": [500.0, INF, INF]},
    index=["mnist_cnn", "mnist_mlp", "mnist_logreg"],
)


def test_ratios_are_to_each_workloads_fastest_and_infinite_where_never_reached() -> None:
    ratios = profiles.performance_ratios(TIMES)
    assert ratios.loc["mnist_cnn"].tolist() == [3.0, 1.0, 5.0]
    assert ratios.loc["mnist_mlp"].tolist() == [1.0, 1.5, INF]
    assert ratios.loc["mnist_logreg"].tolist() == [INF, INF, INF]


def test_the_profile_counts_the_workloads_within_each_tau() -> None:
    rho = profiles.profile(profiles.performance_ratios(TIMES), [1.0, 1.5, 3.0, 4.0, 10.0])
    assert rho["sgd"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["adam"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["adagrad"].tolist() == pytest.approx([0, 0, 0, 0, 1 / 3])


def test_scores_by_hand_and_as_the_integral_of_the_profile() -> None:
    ratios = profiles.performance_ratios(TIMES)
    score = profiles.scores(ratios)
    # sgd: cnn ratio 3 counts for tau in [3, 4]: 1 of 3; mlp ratio 1 for all of [1, 4]: 3 of 3.
    assert score["sgd"] == pytest.approx(((4 - 3) + (4 - 1) + 0) / 3 / 3)
    assert score["adam"] == pytest.approx(((4 - 1) + (4 - 1.5) + 0) / 3 / 3)
    assert score["adagrad"] == 0.0  # ratio 5 > 4 on the CNN, never on the others
    taus = np.linspace(1.0, profiles.MAX_RATIO, 300_001)
    rho = profiles.profile(ratios, taus)
    integral = np.trapezoid(rho.to_numpy(), taus, axis=0) / (profiles.MAX_RATIO - 1)
    assert integral == pytest.approx(score.to_numpy(), abs=1e-4)


def test_the_fastest_on_every_workload_scores_one() -> None:
    times = pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 2.0]})
    scores = profiles.scores(profiles.performance_ratios(times))
    assert scores.tolist() == [1.0, pytest.approx(5 / 6)]


def test_the_median_over_seeds_counts_a_seed_that_never_reached_the_target() -> None:
    assert profiles.median_time([120.0, 80.0, 100.0]) == 100.0
    assert profiles.median_time([80.0, INF, 100.0]) == 100.0  # 2 of 3 reached it
    assert profiles.median_time([80.0, INF, INF]) == INF
    assert profiles.median_time([80.0, INF]) == INF  # half is not a majority
    with pytest.raises(ValueError, match="no seed"):
        profiles.median_time([])


def runs(rows: list[tuple[str, str, int, float | None]]) -> pd.DataFrame:
    """A workload's runs table (evaluate's runs.csv) with its steps and seconds to 0.97: one
    row per (setting, optimizer, seed, steps), seconds ten times the steps; None: never."""
    table = pd.DataFrame(rows, columns=["setting", "optimizer", "seed", "steps_to_97"])
    table["seconds_to_97"] = table["steps_to_97"] * 10
    return table


def test_the_score_table_from_runs_tables_matches_a_hand_computation() -> None:
    """Made-up runs of two workloads: the medians over seeds, a seed that never reached the
    target counting as infinite, a workload no optimizer reached, and the scores by hand."""
    cnn = runs([("default", "sgd", 1, 300), ("default", "sgd", 2, 500), ("default", "sgd", 3, 400),
                ("default", "adam", 1, 100), ("default", "adam", 2, None), ("default", "adam", 3, 200)])
    # adam never reaches it in 2 of 3 seeds: its median is infinite.
    mlp = runs([("default", "sgd", 1, 100), ("default", "sgd", 2, 100), ("default", "sgd", 3, 100),
                ("default", "adam", 1, 250), ("default", "adam", 2, None), ("default", "adam", 3, None)])
    logreg = runs([("default", o, s, None) for o in ("sgd", "adam") for s in (1, 2, 3)])
    targets = {"cnn": 0.97, "mlp": 0.97, "logreg": 0.97}
    table = profiles.score_table({"cnn": cnn, "mlp": mlp, "logreg": logreg}, targets, ["default"])
    sgd, adam = (table.set_index("optimizer").loc[name] for name in ("sgd", "adam"))
    assert (sgd["cnn_steps"], adam["cnn_steps"]) == (400, 200)  # medians: 400; (100, 200, inf)
    assert (sgd["cnn_ratio"], adam["cnn_ratio"]) == (2.0, 1.0)
    assert (sgd["mlp_ratio"], adam["mlp_ratio"]) == (1.0, INF)
    assert sgd["logreg_ratio"] == adam["logreg_ratio"] == INF
    # sgd: (4 - 2)/3 on cnn, (4 - 1)/3 on mlp, 0 on logreg, over 3 workloads; adam: 1 on cnn.
    assert sgd["score_steps"] == pytest.approx(round((2 / 3 + 1) / 3, 4))
    assert adam["score_steps"] == pytest.approx(round(1 / 3, 4))
    assert sgd["score_seconds"] == sgd["score_steps"]  # seconds: the same ratios here
