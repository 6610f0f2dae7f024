"""Stage `register`: which run is the champion, and the registry kept free of duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mnist_optimizers import registry
from mnist_optimizers.errors import PipelineError
from stages import register


def runs_table(rows: list[tuple[str, str, int, float, float]]) -> pd.DataFrame:
    """reports/runs.csv's columns that matter: setting, optimizer, seed, val and test accuracy."""
    return pd.DataFrame(
        rows, columns=["setting", "optimizer", "seed", "val_accuracy", "test_accuracy"]
    ).assign(learning_rate=0.01)


def test_the_champion_is_chosen_by_validation_never_test() -> None:
    runs = runs_table(
        [
            ("default", "sgd", 42, 0.95, 0.999),  # best on test: must not matter
            ("default", "adam", 42, 0.99, 0.97),
            ("tuned", "sgd", 42, 0.98, 0.98),
        ]
    )
    best = register.best_candidate(runs)
    assert (best.optimizer, best.seed, best.setting, best.val_accuracy) == (
        "adam",
        42,
        "default",
        0.99,
    )
    assert best.key == "adam-42"


def test_a_tie_goes_to_the_first_run_in_table_order() -> None:
    runs = runs_table([("default", "adam", 42, 0.99, 0.9), ("tuned", "adam", 42, 0.99, 0.9)])
    assert register.best_candidate(runs).key == "adam-42"
    tuned_first = runs_table(
        [("tuned", "rmsprop", 43, 0.99, 0.9), ("default", "adam", 42, 0.99, 0.9)]
    )
    assert register.best_candidate(tuned_first).key == "rmsprop-43-tuned"


def test_a_table_without_validation_accuracy_is_refused() -> None:
    with pytest.raises(PipelineError, match="missing columns val_accuracy"):
        register.best_candidate(runs_table([]).drop(columns="val_accuracy"))
    with pytest.raises(PipelineError, match="no run with a val_accuracy"):
        register.best_candidate(runs_table([]))


def test_without_evaluate_the_stage_says_what_to_run(project: Path) -> None:
    with pytest.raises(PipelineError, match="run the evaluate stage first"):
        register.main([])


def test_a_run_from_another_store_is_reported_not_registered(project: Path) -> None:
    """A result restored from DVC's run cache may name a run logged to another store: the
    stage says so and writes that down instead of failing or registering something else."""
    runs = runs_table([("default", "adam", 42, 0.99, 0.9)])
    summary = register.champion({"adam-42": "0123456789abcdef0123456789abcdef"}, runs)
    assert summary["registered"] is False and summary["optimizer"] == "adam"
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []


def test_registering_the_same_run_twice_adds_no_version(project: Path) -> None:
    """A real run with a real logged model, registered twice: one version, aliased."""
    import keras
    import numpy as np

    from mnist_optimizers import mlflow_logs, mlflow_store

    mlflow_store.connect()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(10, activation="softmax")])
    with mlflow.start_run(run_name="adam-42") as run:
        mlflow_logs.log_model(model, example=np.zeros((1, 2), np.float32))
    runs = runs_table([("default", "adam", 42, 0.99, 0.9)])

    first = register.champion({"adam-42": run.info.run_id}, runs)
    second = register.champion({"adam-42": run.info.run_id}, runs)

    assert first["registered"] and first["version"] == second["version"] == 1
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions(f"name = '{registry.MODEL_NAME}'")) == 1
    version = client.get_model_version_by_alias(registry.MODEL_NAME, registry.ALIAS)
    assert version.run_id == run.info.run_id
    assert version.tags["optimizer"] == "adam" and version.tags["dvc.experiment"] == "workspace"
    # What the stage writes to reports/champion.json: plain JSON a user can read.
    assert json.loads(json.dumps(second))["model_uri"] == "models:/mnist-cnn@champion"


def test_a_worse_pipeline_result_does_not_take_the_alias(project: Path) -> None:
    """A quick experiment (fewer epochs) registers its best model, but the alias stays on
    the better champion; a better one takes it."""
    import keras
    import numpy as np

    from mnist_optimizers import mlflow_logs, mlflow_store

    mlflow_store.connect()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(10, activation="softmax")])
    run_ids = {}
    for key in ("adam-42", "sgd-42", "rmsprop-42"):
        with mlflow.start_run(run_name=key) as run:
            mlflow_logs.log_model(model, example=np.zeros((1, 2), np.float32))
        run_ids[key] = run.info.run_id

    good = register.champion(run_ids, runs_table([("default", "adam", 42, 0.99, 0.9)]))
    worse = register.champion(run_ids, runs_table([("default", "sgd", 42, 0.95, 0.9)]))
    better = register.champion(run_ids, runs_table([("default", "rmsprop", 42, 0.995, 0.9)]))

    assert (good["version"], good["champion"]) == (1, True)
    assert (worse["version"], worse["champion"], worse["champion_version"]) == (2, False, 1)
    assert (better["version"], better["champion"]) == (3, True)
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(registry.MODEL_NAME, registry.ALIAS).version in (
        3,
        "3",
    )
