"""The expected best accuracy after k trials of a search: against a hand computation and
against every order of the trials."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pandas as pd
import pytest

from mnist_optimizers import tunability


def test_expected_best_matches_a_hand_computation() -> None:
    values = [0.1, 0.9, 0.5]
    assert tunability.expected_best(values, 1) == pytest.approx(0.5)  # the mean
    # pairs: {0.1, 0.9} -> 0.9, {0.1, 0.5} -> 0.5, {0.9, 0.5} -> 0.9: (0.9 + 0.5 + 0.9) / 3
    assert tunability.expected_best(values, 2) == pytest.approx(2.3 / 3)
    assert tunability.expected_best(values, 3) == pytest.approx(0.9)  # all of them: the best
    with pytest.raises(ValueError, match="k must be in 1..3"):
        tunability.expected_best(values, 4)


def test_expected_best_is_the_mean_over_every_order_of_the_trials() -> None:
    values = np.random.default_rng(1).uniform(0.8, 1.0, size=6)
    for k in range(1, 7):
        bests = [max(order[:k]) for order in permutations(values)]
        assert tunability.expected_best(values, k) == pytest.approx(np.mean(bests), rel=1e-12)


def test_the_table_counts_a_diverged_trial_as_zero_and_rises_with_the_trials() -> None:
    tuning = pd.DataFrame({
        "optimizer": ["sgd"] * 3 + ["adam"] * 2,
        "val_accuracy": [0.5, 0.9, float("nan"), 0.8, 0.95],
        "diverged": [False, False, True, False, False],
    })  # fmt: skip
    table = tunability.tunability_table(tuning)
    sgd = table[table["optimizer"] == "sgd"]["expected_best_val_accuracy"].tolist()
    assert sgd == pytest.approx([(0.5 + 0.9 + 0) / 3, (0.5 + 0.9 + 0.9) / 3, 0.9])
    adam = table[table["optimizer"] == "adam"]
    assert adam["trials"].tolist() == [1, 2]
    assert adam["expected_best_val_accuracy"].tolist() == pytest.approx([0.875, 0.95])


def test_the_report_shows_a_row_per_optimizer_and_names_the_easiest_to_tune() -> None:
    tuning = pd.DataFrame({"optimizer": ["sgd"] * 2 + ["adam"] * 2,
                           "val_accuracy": [0.5, 0.9, 0.8, 0.95],
                           "diverged": False})  # fmt: skip
    table = tunability.tunability_table(tuning)
    wide = tunability.wide_table(table)
    assert list(wide.columns) == ["optimizer", "1 trial", "2 trials"]
    assert wide.values.tolist() == [["sgd", "70.00", "90.00"], ["adam", "87.50", "95.00"]]
    assert tunability.lead(table) == (
        "Expected best validation accuracy of the search after one trial in a random order / "
        "after all its trials: sgd 70.00% / 90.00%, adam 87.50% / 95.00%; the easiest to tune "
        "(the best after one trial): adam."
    )
