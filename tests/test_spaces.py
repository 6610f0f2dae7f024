"""The full search space against the learning rate alone: verdicts, rankings, Choi et al.'s
inclusions, on made-up runs checked by hand and against scipy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mnist_optimizers import spaces

SPECS = {"sgd": {"learning_rate": 0.01}, "adagrad": {}, "adam": {}, "rmsprop": {},
         "sgd_momentum": {"class": "SGD", "momentum": 0.9},
         "sgd_nesterov": {"class": "SGD", "momentum": 0.9, "nesterov": True},
         "nadam": {}, "ftrl": {}}  # fmt: skip


def runs(accuracies: dict[str, list[float]]) -> pd.DataFrame:
    """runs.csv's tuned rows: test accuracy as a fraction, one row per seed."""
    return pd.DataFrame(
        [{"setting": "tuned", "optimizer": o, "diverged": False, "test_accuracy": a / 100}
         for o, values in accuracies.items() for a in values]  # fmt: skip
    )


def test_each_optimizer_gets_a_verdict_on_the_full_space_against_the_rate_alone() -> None:
    rate_only = runs({"sgd": [98.0, 98.1, 98.2], "adam": [98.9, 99.0, 99.1],
                      "rmsprop": [98.4, 98.9, 99.4]})  # fmt: skip
    full = runs({"sgd": [98.8, 98.9, 99.0], "adam": [98.95, 99.0, 99.05],
                 "rmsprop": [98.6, 99.4, 99.9]})  # fmt: skip
    table = spaces.space_table(rate_only, full, alpha=0.05, margin=0.3).set_index("optimizer")
    assert table.loc["sgd", "difference"] == pytest.approx(0.8)
    # Welch by scipy; Holm by hand: the smallest p times 3 (the optimizers tested).
    p = {o: scipy_stats.ttest_ind(100 * full[full.optimizer == o].test_accuracy,
                                  100 * rate_only[rate_only.optimizer == o].test_accuracy,
                                  equal_var=False).pvalue for o in ("sgd", "adam", "rmsprop")}
    for o in p:
        assert table.loc[o, "p_value"] == pytest.approx(p[o])
    assert min(p, key=p.get) == "sgd"
    assert table.loc["sgd", "p_holm"] == pytest.approx(3 * p["sgd"])
    assert table.loc["sgd", "verdict"] == "better"  # 0.8 points, p_holm < 0.05
    assert table.loc["adam", "verdict"] == "equivalent"  # 0.0 +- a little, within 0.3
    assert table.loc["rmsprop", "verdict"] == "inconclusive"
    assert spaces.ranking(table.reset_index(), "rate_only_%") == "adam > rmsprop > sgd"
    assert spaces.ranking(table.reset_index(), "full_%") == "rmsprop > adam > sgd"


def test_choi_et_al_s_inclusions_among_the_compared_optimizers() -> None:
    pairs = spaces.inclusions({k: SPECS[k] for k in ("sgd", "adagrad", "adam", "rmsprop")})
    assert sorted(pairs) == sorted(
        [("adagrad", "sgd"), ("adam", "sgd"), ("rmsprop", "sgd"), ("adam", "rmsprop")]
    )
    assert sorted(spaces.inclusions(SPECS)) == sorted([
        ("sgd_momentum", "sgd"), ("sgd_nesterov", "sgd"), ("adagrad", "sgd"), ("adam", "sgd"),
        ("rmsprop", "sgd"), ("nadam", "sgd"), ("adam", "rmsprop"), ("adam", "sgd_momentum"),
        ("nadam", "sgd_nesterov"),
    ])  # fmt: skip
    significance = pd.DataFrame(
        {"setting": ["default", "tuned", "tuned"], "optimizer_a": ["adam", "sgd", "adam"],
         "optimizer_b": ["sgd", "adam", "rmsprop"],
         "verdict": ["worse", "better", "equivalent"]}  # fmt: skip
    )
    # The tuned rows only; a pair the other way round is read the general one's way.
    assert spaces.inclusion_verdicts(significance, [("adam", "sgd"), ("adam", "rmsprop")]) == [
        ("adam", "sgd", "worse"), ("adam", "rmsprop", "equivalent")
    ]  # fmt: skip


def test_the_readme_block_reads_the_kept_experiment_beside_the_default_results(
    tmp_path: Path,
) -> None:
    rate = {"sgd": [98.0, 98.1, 98.2], "adam": [98.9, 99.0, 99.1]}
    full = {"sgd": [98.9, 99.0, 99.1], "adam": [98.95, 99.0, 99.05]}
    tunability = pd.DataFrame({"optimizer": ["sgd", "sgd", "adam", "adam"], "trials": [1, 2] * 2,
                               "expected_best_val_accuracy": [0.5, 0.9, 0.95, 0.98]})  # fmt: skip
    tuning = pd.DataFrame({"optimizer": ["sgd", "adam"], "learning_rate": [0.1, 0.003],
                           "beta_1": [None, 0.95], "chosen": [True, True]})  # fmt: skip
    significance = pd.DataFrame({"setting": ["tuned"], "optimizer_a": ["sgd"],
                                 "optimizer_b": ["adam"], "verdict": ["inconclusive"]})  # fmt: skip
    default = tmp_path / "reports" / "workloads" / "mnist_cnn"
    kept = tmp_path / "results" / "full_space" / "mnist_cnn"
    for folder, accuracies in ((default, rate), (kept, full)):
        folder.mkdir(parents=True)
        runs(accuracies).assign(train_seconds=10.0).to_csv(folder / "runs.csv", index=False)
        tunability.to_csv(folder / "tunability.csv", index=False)
    tuning.to_csv(kept / "tuning.csv", index=False)
    # In the full space sgd is the easier to tune: 97% after one trial, against adam's 95%.
    tunability.assign(expected_best_val_accuracy=[0.97, 0.99, 0.95, 0.98]).to_csv(
        kept / "tunability.csv", index=False)
    significance.to_csv(kept / "significance.csv", index=False)
    (kept.parent / "experiment.json").write_text(json.dumps({
        "set": ["tune.space=full", "compare_workloads=[mnist_cnn]"], "workloads": ["mnist_cnn"],
        "trials": 16, "grid_points": 9, "seeds": 3, "machine": "CPU (a test), 2 cores",
        "date": "2026-12-07",
        "cost": {"mnist_cnn": {"tune_seconds": 120.4, "train_tuned_seconds": 3000.0}},
    }))  # fmt: skip
    text = spaces.summary(tmp_path, SPECS, alpha=0.05, margin=0.3)
    # The command as a user would paste it: a setting with brackets quoted for the shell.
    assert text.startswith("16 quasi-random trials per optimizer (`dvc exp run -S tune.space=full "
                           "-S 'compare_workloads=[mnist_cnn]'`, CPU (a test), 2 cores, "
                           "2026-12-07) against the default 9-point grid")  # fmt: skip
    assert "| mnist_cnn | sgd | 98.10 | 99.00 | +0.90 | better |" in text
    assert "| mnist_cnn | adam | 99.00 | 99.00 | +0.00 | equivalent |" in text
    assert ("- mnist_cnn: ranking adam > sgd with the rate alone, sgd > adam with the full space; "
            "Choi et al.'s inclusions in the full space: adam vs sgd inconclusive (holds); "
            "easiest to tune (best expected after one trial): adam with the rate alone, sgd "
            "with the full space.") in text  # fmt: skip
    text = spaces.details(tmp_path)
    assert "- Chosen by the full space: sgd lr=0.1; adam lr=0.003 beta_1=0.95." in text
    assert "the easiest to tune (the best after one trial): adam" in text  # rate alone
    assert "the easiest to tune (the best after one trial): sgd" in text  # full space
    assert "the searches 120 s, the tuned runs 3000 s of fit" in text


def test_keep_copies_the_experiment_s_tables_and_measures_its_cost(tmp_path: Path) -> None:
    from mnist_optimizers.params import load_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    with pytest.raises(SystemExit, match="tune.space is not full"):
        spaces.keep(tmp_path, ["tune.space=full"], params)
    params["tune"]["space"], params["compare_workloads"] = "full", ["mnist_cnn"]
    reports = tmp_path / "reports" / "workloads" / "mnist_cnn"
    reports.mkdir(parents=True)
    for file in spaces.FILES:
        (reports / file).write_text(f"{file}\n")
    pd.DataFrame({"setting": ["default", "tuned", "tuned"], "train_seconds": [5.0, 10.0, 20.5],
                  "device": ["CPU (a test)"] * 3}).to_csv(reports / "runs.csv", index=False)
    searches = tmp_path / "metrics" / "tune" / "mnist_cnn"
    searches.mkdir(parents=True)
    for name, seconds in (("sgd", 60.25), ("adam", 40.0)):
        (searches / f"{name}.json").write_text(json.dumps({"seconds": seconds}))
    kept = spaces.keep(tmp_path, ["tune.space=full", "tune.trials=8"], params)
    assert (kept / "mnist_cnn" / "tuning.csv").read_text() == "tuning.csv\n"
    experiment = json.loads((kept / "experiment.json").read_text())
    assert experiment["set"] == ["tune.space=full", "tune.trials=8"]
    assert experiment["workloads"] == ["mnist_cnn"] and experiment["seeds"] == 3
    assert experiment["cost"] == {"mnist_cnn": {"tune_seconds": 100.2,
                                                "train_tuned_seconds": 30.5}}  # fmt: skip
    assert experiment["machine"].startswith("CPU (a test), ")
