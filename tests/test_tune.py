"""Stage `tune`: a learning-rate search on tiny data, pruned, grouped in MLflow, best on
validation."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from mnist_optimizers.errors import ParamsError
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import TRAIN_METRICS_DIR, TUNE_DIR
from stages import train, tune

from .conftest import edit_params


def set_tune(**values: object) -> dict:
    return edit_params({f"tune.{key}": value for key, value in values.items()})


def test_search_runs_nested_under_one_parent_prunes_weak_trials_and_picks_the_best(
    processed: Path,
) -> None:
    set_tune(low=0.0001, high=1.0, points=5, images=100, epochs=2)
    tune.main(["adam"])
    result = json.loads((TUNE_DIR / "adam.json").read_text())
    trials = result["trials"]
    assert sorted(t["learning_rate"] for t in trials) == [0.0001, 0.001, 0.01, 0.1, 1.0]
    for t in trials:  # a pruned trial stopped after the first rung, the others ran every epoch
        assert (t["epochs"], t["pruned"]) in {(1, True), (2, False)}, t
        assert t["stopped"].startswith("pruned after epoch 1 of 2" if t["pruned"] else "completed")
    pruned = [t for t in trials if t["pruned"]]
    assert pruned, "5 rates, 1 in 3 goes on past epoch 1: some trial must have been pruned"
    assert result["epochs_trained"] == sum(t["epochs"] for t in trials) < 5 * 2
    complete = [t for t in trials if not t["pruned"]]
    best = max(sorted(complete, key=lambda t: t["learning_rate"]), key=lambda t: t["val_accuracy"])
    assert result["best_learning_rate"] == best["learning_rate"]
    assert result["images"] == 100 and result["pruner"].startswith("successive halving")

    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.run_name == "tune adam" and parent.info.status == "FINISHED"
    assert parent.data.metrics["epochs_trained"] == result["epochs_trained"]
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_rate = {float(c.data.params["optimizer.learning_rate"]): c for c in children}
    assert sorted(by_rate) == [0.0001, 0.001, 0.01, 0.1, 1.0]
    for t in trials:
        child = by_rate[t["learning_rate"]]
        assert child.info.status == "FINISHED"  # a pruned trial is a finished run, tagged
        assert child.data.tags["pruned"] == str(t["pruned"]).lower()
        assert child.data.tags["stopped"] == t["stopped"]
        assert child.data.metrics["epochs_reached"] == t["epochs"]
        steps = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in steps] == list(range(1, t["epochs"] + 1))


def test_the_search_is_reproducible_and_without_pruning_trains_every_trial(
    processed: Path,
) -> None:
    set_tune(low=0.0001, high=1.0, points=5, images=100, epochs=2)
    first = tune.tune("sgd", load_params())
    again = tune.tune("sgd", load_params())
    keep = ("learning_rate", "val_accuracy", "epochs", "pruned")
    assert [{k: t[k] for k in keep} for t in again["trials"]] == [
        {k: t[k] for k in keep} for t in first["trials"]
    ]
    set_tune(prune=False)
    full = tune.tune("sgd", load_params())
    assert [t["epochs"] for t in full["trials"]] == [2] * 5 and full["pruner"] == "none"
    assert full["epochs_trained"] == 10
    # A trial that ran to the end has the same accuracy with or without pruning.
    by_rate = {t["learning_rate"]: t["val_accuracy"] for t in full["trials"]}
    for t in first["trials"]:
        if not t["pruned"]:
            assert t["val_accuracy"] == by_rate[t["learning_rate"]]


def test_tuned_training_uses_the_best_rate(processed: Path) -> None:
    set_tune(low=0.001, high=0.1, points=3, images=100, epochs=2)
    best = tune.tune("sgd", load_params())["best_learning_rate"]
    edit_params({"optimizers.sgd.learning_rate": 0.5})  # not in the grid: the tuned run trains
    train.main(["sgd", "42"])
    train.main(["sgd", "42", "--tuned"])
    metrics = json.loads((TRAIN_METRICS_DIR / "sgd-42-tuned.json").read_text())
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert float(run.data.params["optimizer.learning_rate"]) == pytest.approx(best)
    assert run.data.tags["dvc.stage"] == "train_tuned@sgd-42"


def test_a_bad_grid_fails_before_any_training(project: Path) -> None:
    set_tune(low=0.1, high=0.01)
    with pytest.raises(ParamsError, match="tune: expected 0 < low < high"):
        tune.main(["adam"])
    assert not TUNE_DIR.exists()
