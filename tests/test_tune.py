"""Stage `tune`: a learning-rate grid on tiny data, grouped in MLflow, best on validation."""

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


def test_grid_runs_nested_under_one_parent_and_picks_the_best_validation_rate(
    processed: Path,
) -> None:
    set_tune(low=0.001, high=0.1, points=3, images=100, epochs=1)
    tune.main(["adam"])
    result = json.loads((TUNE_DIR / "adam.json").read_text())
    trials = result["trials"]
    assert [t["learning_rate"] for t in trials] == [0.001, 0.01, 0.1]
    best = max(trials, key=lambda t: t["val_accuracy"])  # first of equals: the smaller rate
    assert result["best_learning_rate"] == best["learning_rate"]
    assert result["images"] == 100

    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.run_name == "tune adam" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(float(c.data.params["optimizer.learning_rate"]) for c in children) == [
        0.001,
        0.01,
        0.1,
    ]
    assert all("val_accuracy" in c.data.metrics for c in children)


def test_tuned_training_uses_the_best_rate(processed: Path) -> None:
    set_tune(low=0.001, high=0.1, points=3, images=100, epochs=1)
    best = tune.tune("sgd", load_params())["best_learning_rate"]
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
