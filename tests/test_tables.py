"""The comparison's tables: summaries over seeds, significance, histories, and their
Markdown and HTML forms."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mnist_optimizers import tables


def runs_frame() -> pd.DataFrame:
    """Two optimizers, three seeds each, with known accuracies and times to 0.98."""
    return pd.DataFrame(
        {
            "optimizer": ["adam"] * 3 + ["sgd"] * 3,
            "seed": [1, 2, 3] * 2,
            "learning_rate": [0.001] * 3 + [0.01] * 3,
            "val_accuracy": [0.990, 0.991, 0.992, 0.970, 0.971, 0.972],
            "test_accuracy": [0.990, 0.992, 0.994, 0.970, 0.972, 0.974],
            "test_loss": [0.03, 0.03, 0.03, 0.09, 0.09, 0.09],
            "train_seconds": [100.0, 110.0, 120.0, 90.0, 90.0, 90.0],
            "epoch_to_98": [2, 3, 3, None, None, None],
            "seconds_to_98": [40.0, 60.0, 62.0, None, None, None],
        }
    )


def test_comparison_gives_mean_spread_interval_and_time_to_target() -> None:
    table = tables.comparison_table(runs_frame(), {"adam": 98.97}, (0.98,), 0.95)
    adam, sgd = table.to_dict("records")
    assert adam["seeds"] == 3 and adam["learning_rate"] == 0.001
    assert adam["val_accuracy_%"] == 99.1 and adam["val_std"] == 0.1
    # t(0.975, 2) = 4.3027; half-width 4.3027 * 0.1 / sqrt(3) = 0.248 points
    assert adam["val_ci95_low"] == pytest.approx(98.85) and adam["val_ci95_high"] == 99.35
    assert adam["reference_val_accuracy_%"] == 98.97
    assert adam["difference_points"] == pytest.approx(0.13)
    assert adam["test_accuracy_%"] == 99.2 and adam["test_std"] == 0.2
    assert adam["train_seconds"] == 110.0
    assert adam["to_val_98%"] == "3/3 seeds, median 60 s (epoch 3)"
    assert sgd["to_val_98%"] == "never"
    assert sgd["reference_val_accuracy_%"] is None or math.isnan(sgd["reference_val_accuracy_%"])


def test_significance_says_which_differences_are_real() -> None:
    table = tables.significance_table(runs_frame(), 0.95, 0.3)
    row = table.iloc[0]
    assert (row["optimizer_a"], row["optimizer_b"]) == ("adam", "sgd")
    assert row["test_difference_points"] == 2.0
    # Welch: difference 0.02, each std 0.002 over 3 seeds -> t = 12.25, 4 df, p = 0.00026
    assert row["p_value"] == pytest.approx(0.0003, abs=1e-4) and bool(row["significant"])
    assert row["verdict"] == "better" and not row["equivalent"] and pd.isna(row["seeds_needed"])
    assert tables.significance_lead(table, 0.95) == (
        "At 0.05, Holm-corrected over the pairs: significantly different (Welch's t-test over "
        "seeds): adam vs sgd (+2.00 points). Equivalent within ±0.3 points (two one-sided "
        "tests): none. Inconclusive: none."
    )

    one_seed = runs_frame().groupby("optimizer").head(1)
    table = tables.significance_table(one_seed, 0.95, 0.3)
    assert not table["significant"].any()
    assert tables.significance_lead(table, 0.95).startswith("Not testable")


def test_p_values_read_as_a_person_writes_them() -> None:
    assert tables.p_text(3e-6) == "< 0.0001" and tables.p_text(0.0) == "< 0.0001"
    assert tables.p_text(0.01234) == "0.0123" and tables.p_text(1.0) == "1.0000"
    assert tables.p_text(float("nan")) == ""
    table = tables.significance_table(runs_frame(), 0.95, 0.3)
    assert table["p_value"].iloc[0] > 0  # kept to 4 significant digits, never rounded to 0
    readable = tables.readable_significance(table, 0.95)
    assert list(readable.columns) == [
        "optimizer A",
        "optimizer B",
        "A − B, test accuracy (points)",
        "p (Welch's t-test)",
        "p (Holm-corrected)",
        "significant at 0.05",
        "p within ±0.3 points (TOST, Holm)",
        "verdict (A vs B)",
        "seeds each for a decision",
    ]
    assert readable.iloc[0].tolist()[2:] == ["+2.00", "0.0003", "0.0003", "yes", "0.9998",
                                             "better", ""]  # fmt: skip


def test_the_headline_says_who_leads_by_how_much_and_whether_it_is_real() -> None:
    runs = runs_frame()
    comparison = tables.comparison_table(runs, {}, [0.98], 0.95)
    significance = tables.significance_table(runs, 0.95, 0.3)
    (sentence,) = tables.headline({"default": comparison}, {"default": significance})
    assert sentence == (
        "Learning rates from params.yaml: adam leads on test accuracy (99.20%, lr 0.001), "
        "2.00 points ahead of sgd (significant); pairs of optimizers: 1 significantly "
        "different, 0 equivalent within ±0.3 points, 0 inconclusive."
    )
    # A third optimizer at adam's accuracy, a second (rmsprop) with a wide spread around it.
    close = runs[runs["optimizer"] == "adam"].assign(optimizer="nadam")
    close["test_accuracy"] += 0.0001
    wide = runs[runs["optimizer"] == "adam"].assign(optimizer="rmsprop")
    wide["test_accuracy"] = [0.980, 0.992, 0.999]
    runs = pd.concat([runs, close, wide], ignore_index=True)
    comparison = tables.comparison_table(runs, {}, [0.98], 0.95)
    significance = tables.significance_table(runs, 0.95, 1.0)
    verdict = significance.set_index(["optimizer_a", "optimizer_b"])["verdict"]
    assert verdict[("adam", "nadam")] == "equivalent"
    assert verdict[("adam", "rmsprop")] == "inconclusive"
    (sentence,) = tables.headline({"default": comparison}, {"default": significance})
    needed = tables.seeds_text(significance["seeds_needed"].max())
    assert sentence.endswith(
        "0.01 points ahead of adam (equivalent within ±1 points); pairs of optimizers: "
        "2 significantly different, 1 equivalent within ±1 points, 3 inconclusive (deciding "
        f"them all needs {needed} seeds each)."
    )


def test_the_headline_of_one_optimizer_names_it_alone() -> None:
    """`compare: [adam]`: nothing to compare it with, and no pair to test (the report used
    to fail here with a KeyError)."""
    runs = runs_frame()
    runs = runs[runs["optimizer"] == "adam"]
    comparison = tables.comparison_table(runs, {}, [0.98], 0.95)
    (sentence,) = tables.headline({"default": comparison}, {})
    assert (
        sentence
        == "Learning rates from params.yaml: adam leads on test accuracy (99.20%, lr 0.001)."
    )


def test_history_mean_has_a_band_over_seeds() -> None:
    history = pd.DataFrame(
        {
            "setting": ["default"] * 4,
            "optimizer": ["adam"] * 4,
            "seed": [1, 1, 2, 2],
            "epoch": [1, 2, 1, 2],
            "loss": [0.5, 0.3, 0.7, 0.1],
            "accuracy": [0.8, 0.9, 0.8, 0.9],
            "val_loss": [0.4, 0.2, 0.6, 0.2],
            "val_accuracy": [0.9, 0.95, 0.8, 0.97],
        }
    )
    mean = tables.history_mean(history)
    assert list(mean["epoch"]) == [1, 2]
    assert list(mean["val_accuracy"]) == pytest.approx([0.85, 0.96])
    assert list(mean["val_accuracy_min"]) == [0.8, 0.95]
    assert list(mean["val_accuracy_max"]) == [0.9, 0.97]


def trial(accuracy: float, epochs: float, pruned: bool, **hyperparameters: float) -> dict:
    return {"learning_rate": hyperparameters["learning_rate"], "hyperparameters": hyperparameters,
            "val_accuracy": accuracy, "epochs": epochs, "pruned": pruned, "diverged": False}


def test_the_tuning_table_shows_pruned_trials_as_such_and_by_rate() -> None:
    result = {
        "space": "learning_rate",
        "best": {"learning_rate": 0.001},
        "images": 100,
        "epochs": 2,
        "pruner": "successive halving (first rung after 1 epoch(s), reduction factor 3)",
        "trials": [  # in the order the search tried them
            trial(0.5, 1, True, learning_rate=0.01),
            trial(0.9, 2, False, learning_rate=0.001),
            trial(0.7, 2, False, learning_rate=0.0001),
        ],
    }
    table = tables.tuning_table({"adam": result})
    assert list(table["learning_rate"]) == [0.0001, 0.001, 0.01]
    assert list(table["pruned"]) == [False, False, True] and list(table["epochs"]) == [2, 2, 1]
    assert list(table["chosen"]) == [False, True, False]
    title = tables.section_title("tuned", table)
    assert title.startswith("Tuned hyperparameters: the learning rate (grid 0.0001, 0.001, 0.01; "
                            "each trial 100 training images x up to 2 epochs")  # fmt: skip
    assert "weak ones stopped early: successive halving" in title


def test_a_full_space_search_has_a_column_per_hyperparameter_and_names_what_it_chose() -> None:
    common = {"space": "full", "images": 100, "epochs": 2, "pruner": "none"}
    adam = common | {
        "best": {"learning_rate": 0.003, "beta_1": 0.95, "beta_2": 0.99, "epsilon": 1e-06},
        "trials": [trial(0.9, 2, False, learning_rate=0.003, beta_1=0.95, beta_2=0.99,
                         epsilon=1e-06),
                   trial(0.8, 2, False, learning_rate=0.03, beta_1=0.5, beta_2=0.9,
                         epsilon=0.01)],
    }  # fmt: skip
    sgd = common | {"best": {"learning_rate": 0.1},
                    "trials": [trial(0.85, 2, False, learning_rate=0.1),
                               trial(0.6, 2, False, learning_rate=0.001)]}  # fmt: skip
    table = tables.tuning_table({"adam": adam, "sgd": sgd})
    assert list(table.columns[:6]) == ["optimizer", "space", "learning_rate", "beta_1", "beta_2",
                                       "epsilon"]  # fmt: skip
    assert table["beta_1"].isna().tolist() == [False, False, True, True]  # sgd has none
    assert list(table["chosen"]) == [True, False, False, True]
    assert tables.section_title("tuned", table) == (
        "Tuned hyperparameters: the full space (2 quasi-random trials per optimizer over its "
        "learning rate and other hyperparameters; each trial 100 training images x up to 2 "
        "epochs; chosen on validation accuracy: adam lr=0.003 beta_1=0.95 beta_2=0.99 "
        "epsilon=1e-06; sgd lr=0.1)"
    )


def test_across_workloads_says_what_holds_on_every_workload_and_what_does_not() -> None:
    def comparison(accuracies: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame({"setting": "default", "optimizer": list(accuracies),
                             "test_accuracy_%": list(accuracies.values())})  # fmt: skip

    def significance(rows: list[tuple[str, str, float, bool]]) -> pd.DataFrame:
        table = pd.DataFrame(rows, columns=["optimizer_a", "optimizer_b",
                                            "test_difference_points", "significant"])  # fmt: skip
        verdict = table["significant"].map({True: "better", False: "inconclusive"})
        needed = table["significant"].map({True: float("nan"), False: 12.0})
        return table.assign(setting="default", margin_points=0.3, verdict=verdict,
                            seeds_needed=needed)  # fmt: skip

    comparisons = {"cnn": comparison({"sgd": 97.0, "adam": 99.0, "adagrad": 92.0}),
                   "mlp": comparison({"sgd": 96.0, "adam": 98.0, "adagrad": 93.0})}  # fmt: skip
    pairs = {  # adam beats adagrad on both; sgd beats adagrad only on the CNN
        "cnn": significance([("sgd", "adam", -2.0, True), ("sgd", "adagrad", 5.0, True),
                             ("adam", "adagrad", 7.0, True)]),
        "mlp": significance([("sgd", "adam", -2.0, False), ("sgd", "adagrad", 3.0, False),
                             ("adam", "adagrad", 5.0, True)]),
    }  # fmt: skip
    scores = pd.DataFrame({"setting": "default", "optimizer": ["sgd", "adam", "adagrad"],
                           "score_steps": [0.5, 1.0, 0.0]})  # fmt: skip
    leader, agreement, profile = tables.across_workloads(comparisons, pairs, scores)
    assert leader == ("Learning rates from params.yaml: adam is the most accurate on every "
                      "workload (cnn 99.00%, mlp 98.00%).")  # fmt: skip
    assert agreement == (
        "Learning rates from params.yaml: significant on every workload, in the same "
        "direction: adam > adagrad; significant on some workloads only: adam > sgd on cnn; "
        "sgd > adagrad on cnn; inconclusive: 2 of 6 pairs over the workloads (deciding them "
        "all needs 12 seeds each)."
    )
    assert profile.endswith("adam 1.00, sgd 0.50, adagrad 0.00.")
    comparisons["mlp"].loc[comparisons["mlp"]["optimizer"] == "sgd", "test_accuracy_%"] = 99.5
    (leader, *_) = tables.across_workloads(comparisons, pairs, scores)
    assert leader.endswith("the most accurate differs by workload: adam on cnn, sgd on mlp.")
    for table in pairs.values():  # nothing decided: 3 seeds were too few everywhere
        table["significant"], table["verdict"], table["seeds_needed"] = False, "inconclusive", [
            5.0, 30.0, 12.0]  # fmt: skip
    (_, agreement, _) = tables.across_workloads(comparisons, pairs, scores)
    assert agreement == ("Learning rates from params.yaml: no difference is significant on any "
                         "workload; inconclusive: 6 of 6 pairs over the workloads (deciding "
                         "them all needs 30 seeds each).")  # fmt: skip
    for table in pairs.values():
        table.loc[table["optimizer_b"] == "adam", "verdict"] = "equivalent"
    (_, agreement, _) = tables.across_workloads(comparisons, pairs, scores)
    assert agreement.endswith("no difference is significant on any workload; equivalent "
                              "within ±0.3 points on every workload: sgd = adam; inconclusive: "
                              "4 of 6 pairs over the workloads (deciding them all needs 30 "
                              "seeds each).")  # fmt: skip


def test_the_score_table_for_people_says_never_where_no_seed_reached_the_target() -> None:
    scores = pd.DataFrame({"setting": ["default", "default"], "optimizer": ["sgd", "adam"],
                           "score_steps": [0.0, 1.0], "score_seconds": [0.0, 0.98172],
                           "cnn_steps": [math.inf, 422.0],
                           "mlp_steps": [1688.0, 844.0]})  # fmt: skip
    table = tables.readable_scores(scores, {"cnn": 0.97, "mlp": 0.98})
    assert list(table.columns) == ["learning rates", "optimizer", "score (steps)",
                                   "score (seconds)", "cnn steps to 0.97",
                                   "mlp steps to 0.98"]  # fmt: skip
    assert table.values.tolist() == [["default", "sgd", "0.00", "0.00", "never", "1688"],
                                     ["default", "adam", "1.00", "0.98", "422", "844"]]  # fmt: skip
