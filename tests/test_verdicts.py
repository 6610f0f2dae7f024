"""The verdicts on pairs of optimizers: the equivalence test (TOST) against scipy's one-sided
Welch tests and a hand computation, and the seeds a decision needs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mnist_optimizers import verdicts
from mnist_optimizers.stats import holm as stats_holm


def test_tost_matches_a_hand_computation() -> None:
    # x = 1, 2, 3 and y = 1, 1, 1: difference 1, standard error sqrt(1/3), 2 degrees of
    # freedom, whose t distribution has the closed form cdf(t) = 1/2 + t / (2 sqrt(t^2 + 2)).
    # Margin 3: t = (1 + 3) / sqrt(1/3) = sqrt(48) for the lower test, (1 - 3) / sqrt(1/3) =
    # -sqrt(12) for the upper; the larger one-sided p is the upper's, 1/2 - sqrt(12/14) / 2.
    p = verdicts.tost_p([1, 2, 3], [1, 1, 1], margin=3)
    assert p == pytest.approx(0.5 - math.sqrt(12 / 14) / 2, rel=1e-9)  # 0.0371: equivalent
    # Margin 5: t = sqrt(108) and -sqrt(48); the upper test's p, 1/2 - sqrt(48/50) / 2, is larger.
    p = verdicts.tost_p([1, 2, 3], [1, 1, 1], margin=5)
    assert p == pytest.approx(0.5 - math.sqrt(48 / 50) / 2, rel=1e-9)  # 0.0101
    # Margin 1: the difference is at the margin, t = 0, p = 1/2: not equivalent.
    assert verdicts.tost_p([1, 2, 3], [1, 1, 1], margin=1) == pytest.approx(0.5)


def test_tost_matches_scipys_one_sided_welch_tests_on_made_up_data() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(0.99, rng.uniform(0.0005, 0.005), size=rng.integers(2, 8))
        y = rng.normal(0.99, rng.uniform(0.0005, 0.005), size=rng.integers(2, 8))
        margin = rng.uniform(0.001, 0.01)
        lower = stats.ttest_ind(x, y - margin, equal_var=False, alternative="greater").pvalue
        upper = stats.ttest_ind(x, y + margin, equal_var=False, alternative="less").pvalue
        assert verdicts.tost_p(x, y, margin) == pytest.approx(max(lower, upper), rel=1e-9)


def test_an_equivalent_pair_and_one_that_is_not() -> None:
    close = [0.9890, 0.9895, 0.9900], [0.9893, 0.9897, 0.9901]
    assert verdicts.tost_p(*close, margin=0.003) < 0.05  # within +-0.3 points: equivalent
    apart = [0.9890, 0.9895, 0.9900], [0.9940, 0.9945, 0.9950]
    assert verdicts.tost_p(*apart, margin=0.003) > 0.5  # 0.5 points apart: not equivalent
    assert math.isnan(verdicts.tost_p([0.99], [0.98, 0.97], margin=0.003))  # one seed
    assert math.isnan(verdicts.tost_p([0.99, 0.99], [0.98, 0.98], margin=0.003))  # no spread
    with pytest.raises(ValueError, match="margin"):
        verdicts.tost_p(*close, margin=0)


def test_seeds_needed_matches_a_hand_computation() -> None:
    # Both sides' standard deviation 1, margin 2, one pair at 0.05: n seeds suffice when
    # t(0.975, 2n - 2) * sqrt(2 / n) <= 1: 2.1448 * 0.5 = 1.07 at n = 8, 2.1199 * 0.4714 =
    # 0.9993 at n = 9.
    x, y = [-1.0, 0.0, 1.0], [4.0, 5.0, 6.0]
    assert verdicts.seeds_needed(x, y, margin=2, alpha=0.05, pairs=1) == 9
    # Six pairs: each interval at 0.05 / 6 (Bonferroni), wider, so more seeds.
    assert verdicts.seeds_needed(x, y, margin=2, alpha=0.05, pairs=6) > 9
    assert math.isinf(verdicts.seeds_needed(x, y, margin=1e-3, alpha=0.05, pairs=1))
    assert math.isnan(verdicts.seeds_needed([1.0], y, margin=2, alpha=0.05, pairs=1))


def test_with_the_seeds_needed_the_observed_spread_gives_a_decision() -> None:
    """What seeds_needed promises: with that many seeds and the same spread, whatever the
    difference of the means, the pair is significantly different or equivalent."""
    alpha, margin = 0.05, 0.3
    base = np.array([-1.0, 0.0, 1.0]) * 0.2
    n = int(verdicts.seeds_needed(base, base + 0.1, margin, alpha, pairs=1))
    spread = stats.norm.ppf((np.arange(n) + 0.5) / n)
    spread *= 0.2 / spread.std(ddof=1)  # n values with the observed standard deviation 0.2
    for difference in np.linspace(0, 2 * margin, 61):
        x, y = spread + difference, spread
        different = stats.ttest_ind(x, y, equal_var=False).pvalue < alpha
        assert different or verdicts.tost_p(x, y, margin) < alpha, difference


def test_one_word_per_pair() -> None:
    assert verdicts.verdict(0.5, significant=True, equivalent=False) == "better"
    assert verdicts.verdict(-0.5, significant=True, equivalent=False) == "worse"
    assert verdicts.verdict(0.01, significant=False, equivalent=True) == "equivalent"
    assert verdicts.verdict(0.2, significant=False, equivalent=False) == "inconclusive"
    assert verdicts.verdict(0.01, significant=True, equivalent=True) == "equivalent"


def test_every_pair_gets_a_verdict_and_an_inconclusive_one_the_seeds_it_needs() -> None:
    samples = {
        "adam": [0.9890, 0.9895, 0.9900],
        "rmsprop": [0.9893, 0.9897, 0.9901],  # within 0.1 points of adam, little spread
        "sgd": [0.9700, 0.9710, 0.9720],  # 2 points below both
        "adagrad": [0.9870, 0.9900, 0.9930],  # about adam's mean, a wide spread
    }
    table = verdicts.pair_verdicts(samples, alpha=0.05, margin=0.003).set_index(["a", "b"])
    assert table.loc[("adam", "rmsprop"), "verdict"] == "equivalent"
    assert table.loc[("adam", "sgd"), "verdict"] == "better"
    assert table.loc[("rmsprop", "sgd"), "verdict"] == "better"
    assert table.loc[("sgd", "adagrad"), "verdict"] == "worse"
    assert table.loc[("adam", "adagrad"), "verdict"] == "inconclusive"
    # Holm over the six pairs: the TOST p-values are corrected as the t-tests' are.
    assert list(table["tost_p_holm"]) == pytest.approx(
        stats_holm(list(table["tost_p"]))
    )
    needed = table.loc[("adam", "adagrad"), "seeds_needed"]
    assert needed == verdicts.seeds_needed(samples["adam"], samples["adagrad"], 0.003, 0.05, 6)
    assert needed > 3
    decided = table[table["verdict"] != "inconclusive"]
    assert decided["seeds_needed"].isna().all()
