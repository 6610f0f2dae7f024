"""Stage `evaluate`: test every trained model and write the side-by-side comparison.

For each entry of `optimizers` it loads models/<name>.keras (Keras safe mode) and
metrics/train/<name>.json, predicts the test set in large batches, and writes:

- metrics/evaluate.json: per optimizer, validation and test accuracy, test loss, training seconds;
- reports/comparison.{md,csv}: the table, with the reference accuracies beside ours;
- reports/per_class_accuracy.csv, reports/history.csv and reports/confusion/<name>.csv
  (the data behind `dvc plots show`) and reports/figures/*.png;
- into MLflow: each model's test metrics into its own training run, and the table and
  figures as artifacts of every run, so the UI's run comparison shows them.

    dvc repro evaluate
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis

from stages import runtime, tracking
from stages.common import (
    EVALUATE_METRICS_FILE,
    HISTORY_DIR,
    MODELS_DIR,
    PROCESSED_DIR,
    REPORTS_DIR,
    TRAIN_METRICS_DIR,
    PipelineError,
    atomic_path,
    load_arrays,
    load_params,
    read_json,
    run_stage,
    validate_evaluate,
    validate_optimizer_names,
    write_json_atomic,
    write_text_atomic,
)

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402 - after choosing the headless backend
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIGURES_DIR = REPORTS_DIR / "figures"
CONFUSION_DIR = REPORTS_DIR / "confusion"
HISTORY_LABELS = {"val_accuracy": "Validation accuracy", "val_loss": "Validation loss"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """One model's results on the test set."""

    test_accuracy: float
    test_loss: float
    per_class_accuracy: np.ndarray  # (num_classes,)
    confusion: np.ndarray  # (num_classes, num_classes), rows = actual, columns = predicted
    predictions: np.ndarray  # (n,) predicted digit per test image


def load_model(path: Path) -> keras.Model:
    """Load a trained model in Keras' safe mode, with a clear error if it is missing."""
    if not path.exists():
        raise PipelineError(f"{path}: not found; run its training stage (dvc repro)")
    return keras.saving.load_model(path, safe_mode=True)


def evaluate_model(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> Evaluation:
    """Accuracy, loss, per-class accuracy and confusion matrix of ``model`` on (x, y)."""
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    loss = keras.losses.sparse_categorical_crossentropy(y, probabilities)
    num_classes = probabilities.shape[1]
    predictions = probabilities.argmax(axis=1)
    confusion = np.bincount(
        y.astype(np.int64) * num_classes + predictions, minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    support = confusion.sum(axis=1)
    per_class = np.divide(
        confusion.diagonal(), support, out=np.full(num_classes, np.nan), where=support > 0
    )
    return Evaluation(
        test_accuracy=float((predictions == y).mean()),
        test_loss=float(np.mean(keras.ops.convert_to_numpy(loss))),
        per_class_accuracy=per_class,
        confusion=confusion,
        predictions=predictions,
    )


def comparison_table(
    train_metrics: dict[str, dict[str, Any]],
    evaluations: dict[str, Evaluation],
    reference: dict[str, float],
) -> pd.DataFrame:
    """One row per optimizer: our accuracies (%) beside the reference validation accuracy."""
    rows = []
    for name, evaluation in evaluations.items():
        val_accuracy = 100 * train_metrics[name]["val_accuracy"]
        ref = reference.get(name)
        rows.append(
            {
                "optimizer": name,
                "val_accuracy_%": round(val_accuracy, 2),
                "reference_val_accuracy_%": ref,
                "difference_points": None if ref is None else round(val_accuracy - ref, 2),
                "test_accuracy_%": round(100 * evaluation.test_accuracy, 2),
                "test_loss": round(evaluation.test_loss, 4),
                "train_seconds": train_metrics[name]["train_seconds"],
            }
        )
    return pd.DataFrame(rows)


def history_table(names: list[str]) -> pd.DataFrame:
    """Every optimizer's per-epoch history in one long table with an `optimizer` column."""
    frames = []
    for name in names:
        path = HISTORY_DIR / f"{name}.csv"
        if not path.exists():
            raise PipelineError(f"{path}: not found; run its training stage (dvc repro)")
        frames.append(pd.read_csv(path).assign(optimizer=name))
    return pd.concat(frames, ignore_index=True)[["optimizer", *frames[0].columns.drop("optimizer")]]


def plot_history(history: pd.DataFrame, column: str, path: Path) -> None:
    """A line per optimizer of ``column`` against epoch, saved as PNG."""
    label = HISTORY_LABELS.get(column, column)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, group in history.groupby("optimizer", sort=False):
        ax.plot(group["epoch"], group[column], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, name: str, path: Path) -> None:
    """A confusion-matrix heat map with counts, saved as PNG."""
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
    ax.imshow(confusion, cmap="Blues")
    for (row, col), count in np.ndenumerate(confusion):
        color = "white" if count > confusion.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=6, color=color)
    ticks = range(confusion.shape[0])
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xlabel="predicted",
        ylabel="actual",
        title=f"{name}: confusion matrix",
    )
    save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV atomically."""
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))


def evaluate_metrics(
    train_metrics: dict[str, dict[str, Any]], evaluations: dict[str, Evaluation]
) -> dict[str, dict[str, float]]:
    """What `dvc metrics show` prints: per optimizer, val and test accuracy, test loss, seconds."""
    return {
        name: {
            "val_accuracy": train_metrics[name]["val_accuracy"],
            "test_accuracy": evaluation.test_accuracy,
            "test_loss": evaluation.test_loss,
            "train_seconds": train_metrics[name]["train_seconds"],
        }
        for name, evaluation in evaluations.items()
    }


def write_reports(
    table: pd.DataFrame,
    history: pd.DataFrame,
    evaluations: dict[str, Evaluation],
    y_test: np.ndarray,
) -> list[Path]:
    """Write the tables, the plot data and the figures; return the files every run shares."""
    for name, evaluation in evaluations.items():
        write_csv(
            CONFUSION_DIR / f"{name}.csv",
            pd.DataFrame({"actual": y_test, "predicted": evaluation.predictions}),
        )
        plot_confusion(evaluation.confusion, name, FIGURES_DIR / f"confusion_{name}.png")
    per_class = (
        pd.DataFrame({name: e.per_class_accuracy for name, e in evaluations.items()})
        .rename_axis("digit")
        .reset_index()
    )
    plot_history(history, "val_accuracy", FIGURES_DIR / "val_accuracy.png")
    plot_history(history, "val_loss", FIGURES_DIR / "val_loss.png")
    write_csv(REPORTS_DIR / "history.csv", history)
    write_csv(REPORTS_DIR / "per_class_accuracy.csv", per_class)
    write_csv(REPORTS_DIR / "comparison.csv", table)
    write_text_atomic(REPORTS_DIR / "comparison.md", table.to_markdown(index=False) + "\n")
    return [
        REPORTS_DIR / "comparison.md",
        REPORTS_DIR / "comparison.csv",
        REPORTS_DIR / "per_class_accuracy.csv",
        FIGURES_DIR / "val_accuracy.png",
        FIGURES_DIR / "val_loss.png",
    ]


def log_to_mlflow(
    uri: str,
    train_metrics: dict[str, dict[str, Any]],
    evaluations: dict[str, Evaluation],
    artifacts: list[Path],
) -> None:
    """Log each model's test metrics into its training run, and the shared artifacts into
    every run; a run missing from the current store is skipped with a warning."""
    client = mlflow.MlflowClient()
    for name, evaluation in evaluations.items():
        run_id = train_metrics[name]["mlflow_run_id"]
        try:
            client.get_run(run_id)
        except MlflowException:
            log.warning(
                "%s: MLflow run %s is not in %s; not logging its test metrics", name, run_id, uri
            )
            continue
        metrics = {"test_accuracy": evaluation.test_accuracy, "test_loss": evaluation.test_loss}
        metrics |= {
            f"test_accuracy_digit_{d}": float(a)
            for d, a in enumerate(evaluation.per_class_accuracy)
        }
        now = get_current_time_millis()
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        client.log_artifact(run_id, str(FIGURES_DIR / f"confusion_{name}.png"), "evaluation")
        for path in artifacts:
            client.log_artifact(run_id, str(path), "comparison")


def evaluate(params: dict[str, Any]) -> pd.DataFrame:
    """Evaluate every optimizer's model, write the reports and log them; return the table."""
    names = list(validate_optimizer_names(params["optimizers"]))
    config = validate_evaluate(params["evaluate"])
    uri = tracking.connect()  # fail fast, before any model is loaded
    runtime.configure_threads()
    train_metrics = {name: read_json(TRAIN_METRICS_DIR / f"{name}.json") for name in names}
    x_test, y_test = load_arrays(PROCESSED_DIR, "x_test", "y_test")

    evaluations = {}
    for name in names:
        evaluations[name] = evaluate_model(
            load_model(MODELS_DIR / f"{name}.keras"), x_test, y_test, config.batch_size
        )
        keras.backend.clear_session()
        log.info("%s: test accuracy %.4f", name, evaluations[name].test_accuracy)

    table = comparison_table(train_metrics, evaluations, config.reference_val_accuracy)
    artifacts = write_reports(table, history_table(names), evaluations, y_test)
    write_json_atomic(EVALUATE_METRICS_FILE, evaluate_metrics(train_metrics, evaluations))
    log_to_mlflow(uri, train_metrics, evaluations, artifacts)
    return table


def main(argv: list[str]) -> None:
    table = evaluate(load_params())
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    run_stage(main)
