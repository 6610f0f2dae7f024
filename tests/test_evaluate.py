"""Stage `evaluate`: metrics on known predictions, the comparison files, MLflow logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from stages import evaluate, train
from stages.common import EVALUATE_METRICS_FILE, REPORTS_DIR, PipelineError


class FixedModel:
    """Stands in for a Keras model: predict() returns the given probabilities."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities
        self.batch_sizes: list[int] = []

    def predict(self, x: np.ndarray, batch_size: int, verbose: int = 0) -> np.ndarray:
        self.batch_sizes.append(batch_size)
        return self.probabilities


def one_hot_ish(predicted: list[int], confidence: float = 0.91) -> np.ndarray:
    rest = (1 - confidence) / 9
    probabilities = np.full((len(predicted), 10), rest, np.float32)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_metrics_on_known_predictions() -> None:
    y = np.array([0, 0, 1, 2, 2, 2], np.uint8)
    predicted = [0, 1, 1, 2, 2, 0]  # 4 of 6 right
    model = FixedModel(one_hot_ish(predicted))
    result = evaluate.evaluate_model(
        model, np.zeros((6, 28, 28, 1), np.float32), y, batch_size=5000
    )
    assert model.batch_sizes == [5000]
    assert result.test_accuracy == pytest.approx(4 / 6)
    rest = 0.09 / 9
    expected_loss = -(4 * math.log(0.91) + 2 * math.log(rest)) / 6
    assert result.test_loss == pytest.approx(expected_loss, rel=1e-4)
    assert result.confusion[0].tolist()[:3] == [1, 1, 0]
    assert result.confusion[2].tolist()[:3] == [1, 0, 2]
    assert result.confusion.sum() == 6
    np.testing.assert_allclose(result.per_class_accuracy[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(result.per_class_accuracy[3])  # no test image of digit 3


def test_table_puts_reference_beside_ours() -> None:
    evaluation = evaluate.Evaluation(0.95, 0.2, np.ones(10), np.eye(10, dtype=int), np.arange(10))
    table = evaluate.comparison_table(
        {
            "adam": {"val_accuracy": 0.9912, "train_seconds": 100.0},
            "lion": {"val_accuracy": 0.5, "train_seconds": 1.0},
        },
        {"adam": evaluation, "lion": evaluation},
        {"adam": 98.97},
    )
    adam, lion = table.to_dict("records")
    assert adam["val_accuracy_%"] == 99.12 and adam["reference_val_accuracy_%"] == 98.97
    assert adam["difference_points"] == pytest.approx(0.15)
    assert adam["test_accuracy_%"] == 95.0
    assert lion["reference_val_accuracy_%"] is None or math.isnan(lion["reference_val_accuracy_%"])


@pytest.fixture
def trained(processed: Path) -> Path:
    for name in ("sgd", "adam"):
        keras.backend.clear_session()
        train.main([name])
    params = Path("params.yaml")
    params.write_text(
        params.read_text()
        .replace("  adagrad:\n    learning_rate: 0.001\n", "")
        .replace("  rmsprop:\n    learning_rate: 0.001\n", "")
    )
    return processed


def test_evaluate_writes_the_comparison_and_logs_it_to_each_training_run(trained: Path) -> None:
    evaluate.main([])
    metrics = json.loads(EVALUATE_METRICS_FILE.read_text())
    assert list(metrics) == ["sgd", "adam"]
    assert set(metrics["adam"]) == {"val_accuracy", "test_accuracy", "test_loss", "train_seconds"}
    y_test = np.load("data/processed/y_test.npy")
    confusion = pd.read_csv(REPORTS_DIR / "confusion" / "adam.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == len(y_test)
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(
        metrics["adam"]["test_accuracy"]
    )

    table = pd.read_csv(REPORTS_DIR / "comparison.csv")
    assert list(table["optimizer"]) == ["sgd", "adam"]
    assert list(table["reference_val_accuracy_%"]) == [96.50, 98.97]
    markdown = (REPORTS_DIR / "comparison.md").read_text()
    assert "| adam " in markdown and "98.97" in markdown
    history = pd.read_csv(REPORTS_DIR / "history.csv")
    assert list(history["optimizer"]) == ["sgd", "adam"] and "val_accuracy" in history
    for figure in ("val_accuracy", "val_loss", "confusion_sgd", "confusion_adam"):
        assert (REPORTS_DIR / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")

    client = mlflow.MlflowClient()
    for name in ("sgd", "adam"):
        run_id = json.loads(Path(f"metrics/train/{name}.json").read_text())["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.data.metrics["test_accuracy"] == pytest.approx(metrics[name]["test_accuracy"])
        assert run.data.metrics["test_loss"] == pytest.approx(metrics[name]["test_loss"])
        artifacts = {a.path for a in client.list_artifacts(run_id, "comparison")}
        assert {"comparison/comparison.md", "comparison/val_accuracy.png"} <= artifacts
        assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == [
            f"evaluation/confusion_{name}.png"
        ]


def test_a_run_missing_from_the_store_is_skipped_with_a_warning(
    trained: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained / 'other.db'}")
    evaluate.main([])
    assert "MLflow run" in caplog.text and "is not in sqlite:///" in caplog.text
    assert json.loads(EVALUATE_METRICS_FILE.read_text())["adam"]["test_accuracy"] >= 0


def test_a_missing_model_names_the_stage_to_run(trained: Path) -> None:
    Path("models/adam.keras").unlink()
    with pytest.raises(PipelineError, match="models/adam.keras: not found; run its training stage"):
        evaluate.main([])
    assert not EVALUATE_METRICS_FILE.exists()
