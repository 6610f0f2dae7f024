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
from .conftest import WORKLOAD


def runs_table(rows: list[tuple[str, str, int, float, float]]) -> pd.DataFrame:
    """reports/runs.csv's columns that matter: setting, optimizer, seed, val and test accuracy."""
    return pd.DataFrame(
        rows, columns=["setting", "optimizer", "seed", "val_accuracy", "test_accuracy"]
    ).assign(learning_rate=0.01)


FULL = registry.ValidationSet("a" * 16, 6000)


def logged_runs(accuracies: dict[str, float], status: str = "FINISHED") -> dict[str, dict]:
    """An MLflow run per key with a real logged model and its final val_accuracy, ended
    ``status``; each key's metrics file as the train stage writes it."""
    import keras
    import numpy as np

    from mnist_optimizers import mlflow_logs, mlflow_store

    mlflow_store.connect()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(10, activation="softmax")])
    metrics = {}
    for key, accuracy in accuracies.items():
        with mlflow.start_run(run_name=key, tags={"dvc.stage": f"train@{WORKLOAD}-{key}"}) as run:
            mlflow_logs.log_model(model, example=np.zeros((1, 2), np.float32))
            mlflow.log_metric("val_accuracy", accuracy)
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
        metrics[key] = {"mlflow_run_id": run.info.run_id, "val_accuracy": accuracy}
    return metrics


def test_the_champion_is_chosen_by_validation_never_test() -> None:
    runs = runs_table(
        [
            ("default", "sgd", 42, 0.95, 0.999),  # best on test: must not matter
            ("default", "adam", 42, 0.99, 0.97),
            ("tuned", "sgd", 42, 0.98, 0.98),
        ]
    )
    best = register.ranked_candidates(WORKLOAD, runs)[0]
    assert (best.optimizer, best.seed, best.setting, best.val_accuracy) == (
        "adam",
        42,
        "default",
        0.99,
    )
    assert best.key == "adam-42"


def test_a_tie_goes_to_the_first_run_in_table_order() -> None:
    runs = runs_table([("default", "adam", 42, 0.99, 0.9), ("tuned", "adam", 42, 0.99, 0.9)])
    assert register.ranked_candidates(WORKLOAD, runs)[0].key == "adam-42"
    tuned_first = runs_table(
        [("tuned", "rmsprop", 43, 0.99, 0.9), ("default", "adam", 42, 0.99, 0.9)]
    )
    assert register.ranked_candidates(WORKLOAD, tuned_first)[0].key == "rmsprop-43-tuned"


def test_a_table_without_validation_accuracy_is_refused() -> None:
    with pytest.raises(PipelineError, match="missing columns val_accuracy"):
        register.ranked_candidates(WORKLOAD, runs_table([]).drop(columns="val_accuracy"))
    with pytest.raises(PipelineError, match="no run with a val_accuracy"):
        register.ranked_candidates(WORKLOAD, runs_table([]))


def test_without_evaluate_the_stage_says_what_to_run(project: Path) -> None:
    with pytest.raises(PipelineError, match=r"run its evaluate stage first \(dvc repro evaluate@mnist_cnn\)"):
        register.main([WORKLOAD])


def test_a_run_from_another_store_is_reported_not_registered(project: Path) -> None:
    """A result restored from DVC's run cache may name a run logged to another store: the
    stage says so and writes that down instead of failing or registering something else."""
    runs = runs_table([("default", "adam", 42, 0.99, 0.9)])
    metrics = {"adam-42": {"mlflow_run_id": "0123456789abcdef0123456789abcdef"}}
    summary = register.champion(WORKLOAD, metrics, runs, FULL)
    assert summary["registered"] is False and summary["optimizer"] == "adam"
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []


def test_registering_the_same_run_twice_adds_no_version(project: Path) -> None:
    """A real run with a real logged model, registered twice: one version, aliased."""
    metrics = logged_runs({"adam-42": 0.99})
    runs = runs_table([("default", "adam", 42, 0.99, 0.9)])

    first = register.champion(WORKLOAD, metrics, runs, FULL)
    second = register.champion(WORKLOAD, metrics, runs, FULL)

    assert first["registered"] and first["version"] == second["version"] == 1
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions(f"name = '{registry.model_name(WORKLOAD)}'")) == 1
    version = client.get_model_version_by_alias(registry.model_name(WORKLOAD), registry.ALIAS)
    assert version.run_id == metrics["adam-42"]["mlflow_run_id"]
    assert version.tags["optimizer"] == "adam" and version.tags["dvc.experiment"] == "workspace"
    assert (version.tags["val_set"], version.tags["val_images"]) == ("a" * 16, "6000")
    # What the stage writes to reports/champion.json: plain JSON a user can read.
    assert json.loads(json.dumps(second))["model_uri"] == "models:/mnist-cnn@champion"


def test_a_worse_pipeline_result_does_not_take_the_alias(project: Path) -> None:
    """A quick experiment (fewer epochs) registers its best model, but the alias stays on
    the better champion; a better one takes it."""
    metrics = logged_runs({"adam-42": 0.99, "sgd-42": 0.95, "rmsprop-42": 0.995})

    good = register.champion(WORKLOAD, metrics, runs_table([("default", "adam", 42, 0.99, 0.9)]), FULL)
    worse = register.champion(WORKLOAD, metrics, runs_table([("default", "sgd", 42, 0.95, 0.9)]), FULL)
    better = register.champion(WORKLOAD, metrics, runs_table([("default", "rmsprop", 42, 0.995, 0.9)]), FULL
    )

    assert (good["version"], good["champion"]) == (1, True)
    assert (worse["version"], worse["champion"], worse["champion_version"]) == (2, False, 1)
    assert (better["version"], better["champion"]) == (3, True)
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(registry.model_name(WORKLOAD), registry.ALIAS).version in (
        3,
        "3",
    )


def test_only_a_run_that_finished_in_mlflow_becomes_champion(project: Path) -> None:
    """The best by validation accuracy whose run FAILED (or was KILLED) is passed over for
    the next; with none FINISHED nothing is registered."""
    metrics = logged_runs({"adam-42": 0.99}, status="FAILED")
    metrics |= logged_runs({"sgd-42": 0.97}, status="KILLED")
    metrics |= logged_runs({"rmsprop-42": 0.95})
    rows = [("default", "adam", 42, 0.99, 0.9), ("default", "sgd", 42, 0.97, 0.9),
            ("default", "rmsprop", 42, 0.95, 0.9)]  # fmt: skip
    summary = register.champion(WORKLOAD, metrics, runs_table(rows), FULL)
    assert (summary["optimizer"], summary["registered"], summary["champion"]) == (
        "rmsprop", True, True
    )  # fmt: skip
    none_finished = register.champion(WORKLOAD, metrics, runs_table(rows[:2]), FULL)
    assert none_finished["registered"] is False
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions(f"name = '{registry.model_name(WORKLOAD)}'")) == 1


def test_accuracies_on_different_validation_sets_do_not_compare(project: Path) -> None:
    """`preprocess.subset: 10` leaves one validation image: its 100% must not take the alias
    from a model validated on 6,000, and a champion chosen on such a set gives way to one
    chosen on more images."""
    metrics = logged_runs({"adam-42": 0.99, "sgd-42": 1.0, "rmsprop-42": 0.98})
    one_image = registry.ValidationSet("b" * 16, 1)
    real = register.champion(WORKLOAD, metrics, runs_table([("default", "adam", 42, 0.99, 0.9)]), FULL)
    tiny = register.champion(WORKLOAD, metrics, runs_table([("default", "sgd", 42, 1.0, 0.1)]), one_image)
    assert real["champion"] and (tiny["champion"], tiny["champion_version"]) == (False, 1)

    client = mlflow.MlflowClient()  # the other order: the one-image model held it first
    client.set_registered_model_alias(registry.model_name(WORKLOAD), registry.ALIAS, tiny["version"])
    back = register.champion(WORKLOAD, metrics, runs_table([("default", "rmsprop", 42, 0.98, 0.9)]), FULL)
    assert back["champion"] is True and back["optimizer"] == "rmsprop"


@pytest.mark.parametrize("edited", ["metrics file and runs.csv", "runs.csv"])
def test_files_that_disagree_with_the_run_are_refused_naming_them(
    project: Path, edited: str
) -> None:
    """A hand-edited val_accuracy makes a chance-level model the best in the table (evaluate
    copies the metrics file's into runs.csv): the table, the run's metrics file and its
    MLflow run must say the same, or nothing is registered."""
    metrics = logged_runs({"adam-42": 0.99, "sgd-42": 0.11})
    if edited.startswith("metrics file"):
        metrics["sgd-42"]["val_accuracy"] = 0.999
    runs = runs_table([("default", "adam", 42, 0.99, 0.9), ("default", "sgd", 42, 0.999, 0.1)])
    with pytest.raises(PipelineError) as error:
        register.champion(WORKLOAD, metrics, runs, FULL)
    message = str(error.value)
    assert message.startswith("sgd-42: the val_accuracy of its files and of its MLflow run differ")
    assert "reports/workloads/mnist_cnn/runs.csv: 0.999" in message and "MLflow run" in message
    assert f"metrics/train/mnist_cnn/sgd-42.json: {metrics['sgd-42']['val_accuracy']!r}" in message
    assert "they do not belong together" in message
    assert "dvc repro --force train@mnist_cnn-sgd-42 evaluate@mnist_cnn" in message
    assert mlflow.MlflowClient().search_registered_models() == []
