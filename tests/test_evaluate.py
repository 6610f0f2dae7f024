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
import yaml

from stages import evaluate, train, tune
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
    table = evaluate.comparison_table(runs_frame(), {"adam": 98.97}, (0.98,), 0.95)
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
    table = evaluate.significance_table(runs_frame(), 0.95)
    row = table.iloc[0]
    assert (row["optimizer_a"], row["optimizer_b"]) == ("adam", "sgd")
    assert row["test_difference_points"] == 2.0
    # Welch: difference 0.02, each std 0.002 over 3 seeds -> t = 12.25, 4 df, p = 0.00026
    assert row["p_value"] == pytest.approx(0.0003, abs=1e-4) and bool(row["significant"])
    text = evaluate.significance_markdown(table, 0.95)
    assert text.startswith("Significant at 0.05 (Welch's t-test over seeds, Holm-corrected): ")
    assert "adam vs sgd (+2.00 points)" in text

    one_seed = runs_frame().groupby("optimizer").head(1)
    table = evaluate.significance_table(one_seed, 0.95)
    assert not table["significant"].any()
    assert evaluate.significance_markdown(table, 0.95).startswith("Not testable")


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
    mean = evaluate.history_mean(history)
    assert list(mean["epoch"]) == [1, 2]
    assert list(mean["val_accuracy"]) == pytest.approx([0.85, 0.96])
    assert list(mean["val_accuracy_min"]) == [0.8, 0.95]
    assert list(mean["val_accuracy_max"]) == [0.9, 0.97]


@pytest.fixture
def trained(processed: Path) -> Path:
    params = Path("params.yaml")
    values = yaml.safe_load(params.read_text())
    values["compare"] = ["sgd", "adam"]
    values["train"]["seeds"] = [42, 43]
    values["tune"] |= {"low": 0.001, "high": 0.1, "points": 3, "images": 60, "epochs": 1}
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    for name in ("sgd", "adam"):
        tune.main([name])
        for seed in ("42", "43"):
            for flags in ([], ["--tuned"]):
                keras.backend.clear_session()
                train.main([name, seed, *flags])
    return processed


def test_evaluate_writes_the_comparison_and_logs_it_to_each_training_run(trained: Path) -> None:
    evaluate.main([])
    every = json.loads(EVALUATE_METRICS_FILE.read_text())
    assert list(every) == ["default", "tuned"]
    metrics = every["default"]
    assert list(metrics) == ["sgd", "adam"]
    assert metrics["adam"]["seeds"] == 2 and metrics["adam"]["learning_rate"] == 0.001
    best = json.loads(Path("metrics/tune/adam.json").read_text())["best_learning_rate"]
    assert every["tuned"]["adam"]["learning_rate"] == pytest.approx(best)
    all_runs = pd.read_csv(REPORTS_DIR / "runs.csv")
    assert len(all_runs) == 8  # 2 optimizers x 2 seeds x (default, tuned)
    runs = all_runs[all_runs["setting"] == "default"]
    assert list(zip(runs["optimizer"], runs["seed"])) == [
        ("sgd", 42),
        ("sgd", 43),
        ("adam", 42),
        ("adam", 43),
    ]
    adam = runs[runs["optimizer"] == "adam"]
    assert metrics["adam"]["test_accuracy"] == pytest.approx(adam["test_accuracy"].mean(), abs=1e-4)
    assert (
        metrics["adam"]["test_accuracy_ci_low"]
        <= metrics["adam"]["test_accuracy"]
        <= metrics["adam"]["test_accuracy_ci_high"]
    )
    y_test = np.load("data/processed/y_test.npy")
    confusion = pd.read_csv(REPORTS_DIR / "confusion" / "adam.csv")
    assert list(confusion.columns) == ["seed", "actual", "predicted"]
    assert len(confusion) == 2 * len(y_test)
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(
        adam["test_accuracy"].mean()
    )

    table = pd.read_csv(REPORTS_DIR / "comparison.csv")
    assert list(zip(table["setting"], table["optimizer"])) == [
        ("default", "sgd"),
        ("default", "adam"),
        ("tuned", "sgd"),
        ("tuned", "adam"),
    ]
    table = table[table["setting"] == "default"]
    assert list(table["reference_val_accuracy_%"]) == [96.50, 98.97]
    assert "to_val_98%" in table and "to_val_97%" in table
    markdown = (REPORTS_DIR / "comparison.md").read_text()
    assert "| adam " in markdown and "98.97" in markdown
    # Mean ± std and the interval over the two seeds, one cell each.
    adam_row = next(line for line in markdown.splitlines() if line.startswith("| adam "))
    val = adam["val_accuracy"] * 100
    assert f"{val.mean():.2f} ± {val.std():.2f}" in adam_row
    assert "95% interval" in markdown and adam_row.count("[") == 2
    assert "## Tuned learning rates (grid 0.001, 0.01, 0.1;" in markdown
    tuning = pd.read_csv(REPORTS_DIR / "tuning.csv")
    assert len(tuning) == 6 and tuning.groupby("optimizer")["chosen"].sum().tolist() == [1, 1]
    assert "sgd" in (REPORTS_DIR / "significance.md").read_text()
    history = pd.read_csv(REPORTS_DIR / "history.csv")
    assert list(history["seed"]) == [42, 43, 42, 43] * 2 and "val_accuracy" in history
    # 2 settings x 2 optimizers x 1 epoch
    assert len(pd.read_csv(REPORTS_DIR / "history_mean.csv")) == 4
    figures = ["val_accuracy", "val_loss", "val_accuracy-tuned", "tuning", "confusion_sgd"]
    for figure in [*figures, "confusion_adam", "confusion_adam-tuned"]:
        assert (REPORTS_DIR / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")

    client = mlflow.MlflowClient()
    for row in all_runs.itertuples():
        key = f"{row.optimizer}-{row.seed}" + ("-tuned" if row.setting == "tuned" else "")
        run_id = json.loads(Path(f"metrics/train/{key}.json").read_text())["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.data.metrics["test_accuracy"] == pytest.approx(row.test_accuracy)
        assert run.data.metrics["test_loss"] == pytest.approx(row.test_loss)
        artifacts = {a.path for a in client.list_artifacts(run_id, "comparison")}
        assert {"comparison/comparison.md", "comparison/significance.md"} <= artifacts
        label = key.replace(f"-{row.seed}", "")
        assert [a.path for a in client.list_artifacts(run_id, "evaluation")] == [
            f"evaluation/confusion_{label}.png"
        ]


def test_a_run_missing_from_the_store_is_skipped_with_a_warning(
    trained: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained / 'other.db'}")
    evaluate.main([])
    assert "MLflow run" in caplog.text and "is not in sqlite:///" in caplog.text
    assert json.loads(EVALUATE_METRICS_FILE.read_text())["default"]["adam"]["test_accuracy"] >= 0


def test_a_missing_model_names_the_stage_to_run(trained: Path) -> None:
    Path("models/adam-43.keras").unlink()
    with pytest.raises(
        PipelineError, match="models/adam-43.keras: not found; run its training stage"
    ):
        evaluate.main([])
    assert not EVALUATE_METRICS_FILE.exists()


def test_a_model_file_holding_code_is_refused_not_run(tmp_path: Path) -> None:
    """Keras' safe mode: a Lambda layer's Python function in a model file never runs."""
    marker = tmp_path / "code-ran"
    code = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(eval(code))])  # noqa: S307
    path = tmp_path / "adam-42.keras"
    model.save(path)
    marker.unlink()  # building the model ran it once, here, in the test
    with pytest.raises(PipelineError, match="refused: it holds Python code"):
        evaluate.load_model(path)
    assert not marker.exists()


def test_processed_arrays_are_never_unpickled(tmp_path: Path) -> None:
    from stages.common import load_arrays

    np.save(tmp_path / "x_test.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match="refused, not a plain numeric array"):
        load_arrays(tmp_path, "x_test")
