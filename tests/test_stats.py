"""The comparison's arithmetic on numbers worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mnist_optimizers import stats


def test_seed_summary_is_mean_sample_std_and_t_interval() -> None:
    summary = stats.summarize_seeds([0.97, 0.98, 0.99])
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.98)
    assert summary.std == pytest.approx(0.01)
    # t(0.975, 2 df) = 4.3027 (any t table); half-width 4.3027 * 0.01 / sqrt(3) = 0.024841
    assert summary.ci_low == pytest.approx(0.98 - 0.024841, abs=1e-6)
    assert summary.ci_high == pytest.approx(0.98 + 0.024841, abs=1e-6)


def test_one_seed_has_a_mean_and_no_spread() -> None:
    summary = stats.summarize_seeds([0.9])
    assert summary.mean == 0.9 and summary.n == 1
    assert math.isnan(summary.std) and math.isnan(summary.ci_low) and math.isnan(summary.ci_high)
    with pytest.raises(ValueError, match="no values"):
        stats.summarize_seeds([])


def test_holm_adjusts_in_the_given_order_and_keeps_nan() -> None:
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the running 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.5, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.5) and adjusted[2] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])


def test_pairwise_differences_use_welch_and_holm() -> None:
    table = stats.pairwise_differences({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "c": [1.0]})
    ab = table.set_index(["a", "b"]).loc[("a", "b")]
    # Welch: t = -3 / sqrt(1/3 + 1/3) = -3.674 with 4 df -> two-sided p = 0.02131
    assert ab["difference"] == pytest.approx(-3.0)
    assert ab["p_value"] == pytest.approx(0.0213116, rel=1e-5)
    # Only one testable pair (c has one seed), so Holm leaves it as it is.
    assert ab["p_holm"] == pytest.approx(ab["p_value"]) and bool(ab["significant"])
    untestable = table[(table["a"] == "a") & (table["b"] == "c")].iloc[0]
    assert math.isnan(untestable["p_value"]) and not untestable["significant"]


def test_identical_results_are_not_a_significant_difference() -> None:
    table = stats.pairwise_differences({"x": [0.98, 0.98], "y": [0.98, 0.98]})
    assert not table["significant"].any()


def test_log_grid_reads_well() -> None:
    assert stats.log_grid(1e-4, 1e-0, 5) == [0.0001, 0.001, 0.01, 0.1, 1.0]
    assert stats.log_grid(0.001, 0.1, 3) == [0.001, 0.01, 0.1]
    assert stats.log_grid(0.001, 0.01, 3)[1] == 0.00316
    with pytest.raises(ValueError):
        stats.log_grid(0.1, 0.01, 3)


def test_time_to_target_counts_seconds_up_to_the_first_epoch_at_target() -> None:
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "val_accuracy": [0.95, 0.975, 0.981, 0.979],
            "epoch_seconds": [40.0, 30.0, 35.0, 30.0],
        }
    )
    assert stats.time_to_target(history, 0.97) == stats.TimeToTarget(2, 70.0)
    assert stats.time_to_target(history, 0.98) == stats.TimeToTarget(3, 105.0)
    assert stats.time_to_target(history, 0.99) is None
