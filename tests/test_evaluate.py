"""Stage `evaluate`: the comparison files and MLflow logging, on the tiny pipeline that
conftest's `evaluated_template` trains and evaluates once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from mnist_optimizers import runtime
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.paths import evaluate_metrics_file, reports_dir
from stages import evaluate
from .conftest import WORKLOAD


def test_evaluate_writes_the_comparison_and_logs_it_to_each_training_run(evaluated: Path) -> None:
    every = json.loads((reports_dir(WORKLOAD) / "summary.json").read_text())
    assert list(every) == ["default", "tuned"]
    metrics = every["default"]
    assert list(metrics) == ["sgd", "adam"]
    assert metrics["adam"]["seeds"] == 2 and metrics["adam"]["learning_rate"] == 0.001
    best = json.loads((Path("metrics/tune") / WORKLOAD / "adam.json").read_text())["best_learning_rate"]
    assert every["tuned"]["adam"]["learning_rate"] == pytest.approx(best)
    all_runs = pd.read_csv(reports_dir(WORKLOAD) / "runs.csv")
    assert len(all_runs) == 8  # 2 optimizers x 2 seeds x (default, tuned)
    runs = all_runs[all_runs["setting"] == "default"]
    assert list(zip(runs["optimizer"], runs["seed"])) == [
        ("sgd", 42),
        ("sgd", 43),
        ("adam", 42),
        ("adam", 43),
    ]
    adam = runs[runs["optimizer"] == "adam"]
    # Exact, as the runs give them: no display rounding in summary.json.
    assert metrics["adam"]["test_accuracy"] == adam["test_accuracy"].mean()
    assert metrics["adam"]["val_accuracy"] == adam["val_accuracy"].mean()
    assert metrics["adam"]["test_loss"] == adam["test_loss"].mean()
    # Where, how and when each run trained.
    assert set(all_runs["device"]) == {f"CPU ({runtime.cpu_name()})"}
    assert set(all_runs["precision"]) <= {"float32", "mixed_bfloat16"}
    assert all_runs["date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    # The headline `dvc metrics show` prints: the same means, in percent, one per setting and
    # optimizer, nothing else.
    headline = json.loads(evaluate_metrics_file(WORKLOAD).read_text())
    assert {s: list(by_name) for s, by_name in headline.items()} == {
        "default": ["sgd", "adam"],
        "tuned": ["sgd", "adam"],
    }
    for setting in ("default", "tuned"):
        for name in ("sgd", "adam"):
            mean = every[setting][name]["test_accuracy"]
            assert headline[setting][name] == pytest.approx(100 * mean, abs=0.006)
    assert (
        metrics["adam"]["test_accuracy_ci_low"]
        <= metrics["adam"]["test_accuracy"]
        <= metrics["adam"]["test_accuracy_ci_high"]
    )
    y_test = np.load("data/processed/mnist_cnn/y_test.npy")
    # The test accuracy reported is what the saved model really scores on the test set.
    model = keras.saving.load_model("models/mnist_cnn/adam-42.keras")
    predicted = model.predict(np.load("data/processed/mnist_cnn/x_test.npy"), verbose=0).argmax(axis=1)
    adam_42 = adam[adam["seed"] == 42]["test_accuracy"].item()
    assert adam_42 == pytest.approx((predicted == y_test).mean())
    confusion = pd.read_csv(reports_dir(WORKLOAD) / "confusion" / "adam.csv")
    assert list(confusion.columns) == ["seed", "actual", "predicted"]
    assert len(confusion) == 2 * len(y_test)
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(
        adam["test_accuracy"].mean()
    )

    table = pd.read_csv(reports_dir(WORKLOAD) / "comparison.csv")
    assert list(zip(table["setting"], table["optimizer"])) == [
        ("default", "sgd"),
        ("default", "adam"),
        ("tuned", "sgd"),
        ("tuned", "adam"),
    ]
    table = table[table["setting"] == "default"]
    assert list(table["reference_val_accuracy_%"]) == [96.50, 98.97]
    assert "to_val_98%" in table and "to_val_97%" in table  # the workload's targets
    runs_columns = set(pd.read_csv(reports_dir(WORKLOAD) / "runs.csv"))
    assert {"epoch_to_97", "steps_to_97", "seconds_to_97"} <= runs_columns
    markdown = (reports_dir(WORKLOAD) / "comparison.md").read_text()
    # Mean ± std and the interval over the two seeds, one cell each; the tutorial's 98.97 beside.
    adam_row = next(line for line in markdown.splitlines() if line.startswith("| adam "))
    assert [cell.strip() for cell in adam_row.split("|")][5] == "98.97", adam_row
    val = adam["val_accuracy"] * 100
    assert f"{val.mean():.2f} ± {val.std():.2f}" in adam_row
    assert "95% interval" in markdown and adam_row.count("[") == 2
    assert "## Tuned hyperparameters: the learning rate (grid 0.001, 0.01, 0.1;" in markdown
    tuning = pd.read_csv(reports_dir(WORKLOAD) / "tuning.csv")
    assert len(tuning) == 6 and tuning.groupby("optimizer")["chosen"].sum().tolist() == [1, 1]
    pair = pd.read_csv(reports_dir(WORKLOAD) / "significance.csv").iloc[0]
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in (reports_dir(WORKLOAD) / "significance.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    names = [pair["optimizer_a"], pair["optimizer_b"]]
    assert [row[2] for row in rows if row[:2] == names][0] == f"{pair['test_difference_points']:+.2f}"
    history = pd.read_csv(reports_dir(WORKLOAD) / "history.csv")
    assert list(history["seed"]) == [42, 43, 42, 43] * 2 and "val_accuracy" in history
    # 2 settings x 2 optimizers x 1 epoch
    assert len(pd.read_csv(reports_dir(WORKLOAD) / "history_mean.csv")) == 4
    figures = ["val_accuracy", "val_loss", "val_accuracy-tuned", "tuning", "confusion_sgd"]
    for figure in [*figures, "confusion_adam", "confusion_adam-tuned"]:
        assert (reports_dir(WORKLOAD) / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")

    client = mlflow.MlflowClient()
    for row in all_runs.itertuples():
        key = f"{row.optimizer}-{row.seed}" + ("-tuned" if row.setting == "tuned" else "")
        run_id = json.loads(Path("metrics/train", WORKLOAD, f"{key}.json").read_text())["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.data.metrics["test_accuracy"] == pytest.approx(row.test_accuracy)
        contexts = [d.tags[0].value for d in run.inputs.dataset_inputs]
        assert sorted(contexts) == ["test", "training", "validation"]  # test once, reused or not
        assert run.data.metrics["test_loss"] == pytest.approx(row.test_loss)
        artifacts = {a.path for a in client.list_artifacts(run_id, "comparison")}
        assert {"comparison/comparison.md", "comparison/significance.md"} <= artifacts
        label = key.replace(f"-{row.seed}", "")
        # A tuned row that reused its default run shares that run: both confusion matrices.
        assert f"evaluation/confusion_{label}.png" in {
            a.path for a in client.list_artifacts(run_id, "evaluation")
        }


def test_a_run_missing_from_the_store_is_skipped_with_a_warning(
    evaluated: Path, monkeypatch, caplog
) -> None:
    """Results restored from DVC's run cache may name runs of another store: the reports
    are written all the same, and each run not found is named in a warning."""
    before = evaluate_metrics_file(WORKLOAD).read_text()
    evaluate_metrics_file(WORKLOAD).unlink()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{evaluated / 'other.db'}")
    evaluate.main([WORKLOAD])
    assert evaluate_metrics_file(WORKLOAD).read_text() == before
    missing = [line for line in caplog.text.splitlines() if "is not in sqlite:///" in line]
    assert len(missing) == 8  # 2 optimizers x 2 seeds x (default, tuned)
    assert any("adam-43-tuned: MLflow run" in line for line in missing)


def test_a_missing_model_names_the_stage_to_run(evaluated: Path) -> None:
    Path("models", WORKLOAD, "adam-43.keras").unlink()
    evaluate_metrics_file(WORKLOAD).unlink()
    with pytest.raises(
        PipelineError, match="models/mnist_cnn/adam-43.keras: not found; run its training stage"
    ):
        evaluate.main([WORKLOAD])
    assert not evaluate_metrics_file(WORKLOAD).exists()


@pytest.mark.parametrize(
    ("path", "key"),
    [("metrics/train/mnist_cnn/adam-43.json", "val_accuracy"),
     ("metrics/train/mnist_cnn/sgd-42-tuned.json", "mlflow_run_id"),
     ("metrics/tune/mnist_cnn/sgd.json", "best")],
    ids=["train-metric", "train-run-id", "search-result"],
)  # fmt: skip
def test_a_metrics_file_missing_a_key_is_named_before_anything_is_written(
    evaluated: Path, path: str, key: str
) -> None:
    content = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps({k: v for k, v in content.items() if k != key}))
    evaluate_metrics_file(WORKLOAD).unlink()
    with pytest.raises(PipelineError, match=f"^{path}: {key} missing: not as the stage"):
        evaluate.main([WORKLOAD])
    assert not evaluate_metrics_file(WORKLOAD).exists()


def test_a_model_swapped_for_another_runs_is_named_not_evaluated(evaluated: Path) -> None:
    """adam-42's model file replaced by sgd-42's (as a hand-edited dvc.lock would check it
    out): the model carries its run and configuration, which its metrics file must match."""
    shutil.copy2("models/mnist_cnn/sgd-42.keras", "models/mnist_cnn/adam-42.keras")
    evaluate_metrics_file(WORKLOAD).unlink()
    with pytest.raises(PipelineError) as error:
        evaluate.main([WORKLOAD])
    message = str(error.value)
    assert message.startswith(
        "models/mnist_cnn/adam-42.keras and metrics/train/mnist_cnn/adam-42.json do not belong "
        "together: the model is of sgd-42 (mlflow_run_id "
    )
    assert message.endswith("retrain it: dvc repro --force train@mnist_cnn-adam-42")
    assert not evaluate_metrics_file(WORKLOAD).exists()


def test_a_model_without_the_pipelines_identity_is_refused(evaluated: Path) -> None:
    """A Keras model from elsewhere (or an older pipeline): no identity, no evaluation."""
    model = keras.saving.load_model("models/mnist_cnn/sgd-43.keras")
    model.save("models/mnist_cnn/sgd-43.keras")  # plain Keras: what a user's own script writes
    with pytest.raises(PipelineError, match=r"^models/mnist_cnn/sgd-43.keras: carries no identity"):
        evaluate.main([WORKLOAD])
