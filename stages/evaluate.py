"""Stage `evaluate`: test every trained model and write the side-by-side comparison.

For each optimizer named in `compare` and each of `train.seeds` it loads models/<name>-<seed>.keras
(Keras safe mode) and metrics/train/<name>-<seed>.json, predicts the test set in large batches,
and writes:

- metrics/evaluate.json: per optimizer, the mean, standard deviation and confidence interval
  over seeds of validation and test accuracy, test loss and training seconds;
- reports/comparison.{md,csv}: that table, with the reference accuracies beside ours and the
  time to each validation target; reports/runs.csv: one row per optimizer and seed;
- reports/significance.{md,csv}: every pair of optimizers, the difference of their mean test
  accuracies and whether it is significant (Welch's t-test, Holm-corrected);
- reports/per_class_accuracy.csv, reports/history.csv, reports/history_mean.csv and
  reports/confusion/<name>.csv (the data behind `dvc plots show`) and reports/figures/*.png;
- into MLflow: each model's test metrics into its own training run, and the tables and
  figures as artifacts of every run, so the UI's run comparison shows them.

    dvc repro evaluate
"""

from __future__ import annotations

import logging
import math
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

from stages import aggregate, runtime, tracking
from stages.common import (
    EVALUATE_METRICS_FILE,
    HISTORY_DIR,
    MODELS_DIR,
    PROCESSED_DIR,
    REPORTS_DIR,
    TRAIN_METRICS_DIR,
    TUNE_DIR,
    PipelineError,
    atomic_path,
    load_arrays,
    load_params,
    read_json,
    run_key,
    run_stage,
    validate_compare,
    validate_evaluate,
    validate_optimizer_names,
    validate_train,
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
    """Load a trained model in Keras' safe mode: a model file that would run Python code
    (a Lambda layer, a pickled function) is refused with a clear error, never executed."""
    if not path.exists():
        raise PipelineError(f"{path}: not found; run its training stage (dvc repro)")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" not in str(exc) and "unsafe" not in str(exc).lower():
            raise
        raise PipelineError(
            f"{path}: refused: it holds Python code, which Keras' safe mode does not run "
            "(this pipeline never saves such a model); retrain it: dvc repro --force"
        ) from None


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


@dataclass(frozen=True)
class Run:
    """One trained model: its optimizer, seed, training metrics and test results."""

    optimizer: str
    seed: int
    tuned: bool  # trained with the best rate of tune@<optimizer>, not the one in params
    train: dict[str, Any]  # metrics/train/<key>.json
    history: pd.DataFrame  # metrics/history/<key>.csv
    evaluation: Evaluation

    @property
    def key(self) -> str:
        return run_key(self.optimizer, self.seed, self.tuned)

    @property
    def setting(self) -> str:
        return SETTINGS[self.tuned]


SETTINGS = {False: "default", True: "tuned"}  # learning rate: from params.yaml, or tuned


def target_label(target: float) -> str:
    """0.98 -> '98' (for column names)."""
    return f"{100 * target:g}"


def runs_table(runs: list[Run], targets: tuple[float, ...]) -> pd.DataFrame:
    """One row per run (setting, optimizer, seed): learning rate, accuracies, loss, seconds,
    time to each target."""
    rows = []
    for run in runs:
        row = {
            "setting": run.setting,
            "optimizer": run.optimizer,
            "seed": run.seed,
            "learning_rate": run.train["learning_rate"],
            "val_accuracy": run.train["val_accuracy"],
            "test_accuracy": run.evaluation.test_accuracy,
            "test_loss": run.evaluation.test_loss,
            "train_seconds": run.train["train_seconds"],
        }
        for target in targets:
            reached = aggregate.time_to_target(run.history, target)
            label = target_label(target)
            row[f"epoch_to_{label}"] = reached.epoch if reached else None
            row[f"seconds_to_{label}"] = round(reached.seconds, 1) if reached else None
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(summary: aggregate.SeedSummary) -> dict[str, float | None]:
    """Mean, std and interval of a fraction, in percent with two decimals."""

    def pct(value: float) -> float | None:
        return None if math.isnan(value) else round(100 * value, 2)

    return {
        "mean": pct(summary.mean),
        "std": pct(summary.std),
        "ci_low": pct(summary.ci_low),
        "ci_high": pct(summary.ci_high),
    }


def time_to_target_text(group: pd.DataFrame, target: float) -> str:
    """'3/3 seeds, median 95 s (epoch 3)' or 'never' over an optimizer's runs."""
    label = target_label(target)
    reached = group.dropna(subset=[f"seconds_to_{label}"])
    if reached.empty:
        return "never"
    seconds = reached[f"seconds_to_{label}"].median()
    epoch = reached[f"epoch_to_{label}"].median()
    return f"{len(reached)}/{len(group)} seeds, median {seconds:.0f} s (epoch {epoch:g})"


def comparison_table(
    runs: pd.DataFrame, reference: dict[str, float], targets: tuple[float, ...], confidence: float
) -> pd.DataFrame:
    """One row per optimizer of ``runs`` (one setting): mean, spread and interval over seeds of
    validation and test accuracy (%), the reference validation accuracy beside ours, the time
    to each target."""
    rows = []
    level = f"{100 * confidence:g}"
    for name, group in runs.groupby("optimizer", sort=False):
        val = _percent(aggregate.summarize_seeds(group["val_accuracy"], confidence))
        test = _percent(aggregate.summarize_seeds(group["test_accuracy"], confidence))
        ref = reference.get(name)
        row = {
            "optimizer": name,
            "learning_rate": group["learning_rate"].iloc[0],
            "seeds": len(group),
            "val_accuracy_%": val["mean"],
            "val_std": val["std"],
            f"val_ci{level}_low": val["ci_low"],
            f"val_ci{level}_high": val["ci_high"],
            "reference_val_accuracy_%": ref,
            "difference_points": None if ref is None else round(val["mean"] - ref, 2),
            "test_accuracy_%": test["mean"],
            "test_std": test["std"],
            f"test_ci{level}_low": test["ci_low"],
            f"test_ci{level}_high": test["ci_high"],
            "test_loss": round(group["test_loss"].mean(), 4),
            "train_seconds": round(group["train_seconds"].mean(), 1),
        }
        for target in targets:
            row[f"to_val_{target_label(target)}%"] = time_to_target_text(group, target)
        rows.append(row)
    return pd.DataFrame(rows)


def significance_table(runs: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Every pair of optimizers: the difference of their mean test accuracies in points and
    whether it is significant at 1 - ``confidence`` (Welch's t-test over seeds, Holm)."""
    samples = {
        name: list(group["test_accuracy"]) for name, group in runs.groupby("optimizer", sort=False)
    }
    table = aggregate.pairwise_differences(samples, alpha=1 - confidence)
    return pd.DataFrame(
        {
            "optimizer_a": table["a"],
            "optimizer_b": table["b"],
            "test_difference_points": (100 * table["difference"]).round(2),
            "p_value": table["p_value"].round(4),
            "p_holm": table["p_holm"].round(4),
            "significant": table["significant"],
        }
    )


def significance_markdown(table: pd.DataFrame, confidence: float) -> str:
    """The significance table with a sentence a person reads first."""
    alpha = f"{1 - confidence:g}"
    significant = table[table["significant"]]
    if table["p_value"].isna().all():
        lead = "Not testable: every optimizer needs at least two seeds (`train.seeds`)."
    elif significant.empty:
        lead = f"No difference in test accuracy is significant at {alpha} (Holm-corrected)."
    else:
        pairs = [
            f"{r.optimizer_a} vs {r.optimizer_b} ({r.test_difference_points:+.2f} points)"
            for r in significant.itertuples()
        ]
        lead = f"Significant at {alpha} (Welch's t-test over seeds, Holm-corrected): " + (
            "; ".join(pairs) + "."
        )
    return lead + "\n\n" + table.to_markdown(index=False) + "\n"


def history_table(runs: list[Run]) -> pd.DataFrame:
    """Every run's per-epoch history in one long table with `setting`, `optimizer` and `seed`
    columns."""
    frames = [
        run.history.assign(setting=run.setting, optimizer=run.optimizer, seed=run.seed)
        for run in runs
    ]
    history = pd.concat(frames, ignore_index=True)
    first = ["setting", "optimizer", "seed"]
    return history[first + [c for c in history.columns if c not in first]]


def history_mean(history: pd.DataFrame) -> pd.DataFrame:
    """Per setting, optimizer and epoch: the mean over seeds and the band (min, max)."""
    metrics = ["loss", "accuracy", "val_loss", "val_accuracy"]
    grouped = history.groupby(["setting", "optimizer", "epoch"], sort=False)
    table = grouped[metrics].mean()
    for column in ("val_accuracy", "val_loss"):
        table[f"{column}_min"] = grouped[column].min()
        table[f"{column}_max"] = grouped[column].max()
    return table.reset_index()


def plot_history(history: pd.DataFrame, column: str, path: Path) -> None:
    """Per optimizer, the mean over seeds of ``column`` against epoch with a band from the
    lowest to the highest seed, saved as PNG."""
    label = HISTORY_LABELS.get(column, column)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, group in history.groupby("optimizer", sort=False):
        (line,) = ax.plot(group["epoch"], group[column], marker="o", label=name)
        if f"{column}_min" in group:
            ax.fill_between(
                group["epoch"],
                group[f"{column}_min"],
                group[f"{column}_max"],
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch (band: lowest-highest seed)")
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
    comparisons: dict[str, pd.DataFrame], confidence: float
) -> dict[str, dict[str, dict[str, float]]]:
    """What `dvc metrics show` prints: per setting and optimizer, the means over seeds
    (fractions, as the training metrics are) and the intervals of validation and test
    accuracy."""
    level = f"{100 * confidence:g}"
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for setting, table in comparisons.items():
        for row in table.to_dict("records"):
            entry = {"learning_rate": row["learning_rate"], "seeds": row["seeds"]}
            for split in ("val", "test"):
                entry[f"{split}_accuracy"] = row[f"{split}_accuracy_%"] / 100
                for bound in ("low", "high"):
                    value = row[f"{split}_ci{level}_{bound}"]
                    entry[f"{split}_accuracy_ci_{bound}"] = None if pd.isna(value) else value / 100
            entry["test_loss"] = row["test_loss"]
            entry["train_seconds"] = row["train_seconds"]
            metrics.setdefault(setting, {})[row["optimizer"]] = entry
    return metrics


def file_label(name: str, setting: str) -> str:
    """File-name label of an optimizer in a setting: `adam`, `adam-tuned`."""
    return name if setting == "default" else f"{name}-{setting}"


def tuning_table(names: list[str]) -> pd.DataFrame:
    """Every tune@<optimizer> trial: optimizer, learning rate, validation accuracy, chosen."""
    rows = []
    for name in names:
        result = read_json(TUNE_DIR / f"{name}.json")
        for trial in result["trials"]:
            rows.append(
                {
                    "optimizer": name,
                    "learning_rate": trial["learning_rate"],
                    "val_accuracy": trial["val_accuracy"],
                    "chosen": trial["learning_rate"] == result["best_learning_rate"],
                    "images": result["images"],
                    "epochs": result["epochs"],
                }
            )
    return pd.DataFrame(rows)


def plot_tuning(tuning: pd.DataFrame, path: Path) -> None:
    """Validation accuracy against learning rate (log scale), a line per optimizer, the
    chosen rate circled."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, group in tuning.groupby("optimizer", sort=False):
        (line,) = ax.plot(group["learning_rate"], group["val_accuracy"], marker="o", label=name)
        chosen = group[group["chosen"]]
        ax.scatter(
            chosen["learning_rate"],
            chosen["val_accuracy"],
            s=150,
            facecolors="none",
            edgecolors=line.get_color(),
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="learning rate",
        ylabel="validation accuracy",
        title="Learning-rate grid (circled: chosen on validation)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def _mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or pd.isna(low) else f"[{low:.2f}, {high:.2f}]"


def readable_table(table: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The comparison table for people: mean ± std and the interval of each accuracy in one
    cell each (comparison.csv keeps every number in its own column)."""
    level = f"{100 * confidence:g}"
    rows = []
    for row in table.to_dict("records"):
        out = {"optimizer": row["optimizer"], "learning rate": f"{row['learning_rate']:g}"}
        out["seeds"] = row["seeds"]
        for kind in ("val", "test"):
            out[f"{kind} accuracy % (mean ± std)"] = _mean_std(
                row[f"{kind}_accuracy_%"], row[f"{kind}_std"]
            )
            out[f"{kind} {level}% interval"] = _interval(
                row[f"{kind}_ci{level}_low"], row[f"{kind}_ci{level}_high"]
            )
        ref = row["reference_val_accuracy_%"]
        out["tutorial val %"] = "" if ref is None or pd.isna(ref) else f"{ref:.2f}"
        out["test loss"] = f"{row['test_loss']:.4f}"
        out["training s"] = f"{row['train_seconds']:.0f}"
        out |= {k.replace("to_val_", "to val "): v for k, v in row.items() if k.startswith("to_")}
        rows.append(out)
    return pd.DataFrame(rows)


def comparison_markdown(
    comparisons: dict[str, pd.DataFrame], tuning: pd.DataFrame, confidence: float
) -> str:
    """The default-rate table and the tuned-rate table, one under the other."""
    grid = ", ".join(f"{r:g}" for r in sorted(tuning["learning_rate"].unique()))
    sections = {
        "default": "## Learning rates from params.yaml",
        "tuned": (
            f"## Tuned learning rates (grid {grid}; each trial {tuning['images'].iloc[0]} "
            f"training images x {tuning['epochs'].iloc[0]} epochs; chosen on validation "
            "accuracy)"
        ),
    }
    parts = []
    for setting, table in comparisons.items():
        readable = readable_table(table, confidence)
        parts += [sections[setting], "", readable.to_markdown(index=False), ""]
    return "\n".join(parts)


def confusion_frame(runs: list[Run], y_test: np.ndarray) -> pd.DataFrame:
    """Actual and predicted digit per test image, the seeds of ``runs`` stacked."""
    return pd.concat(
        [
            pd.DataFrame(
                {"seed": run.seed, "actual": y_test, "predicted": run.evaluation.predictions}
            )
            for run in runs
        ],
        ignore_index=True,
    )


def write_reports(
    runs: list[Run],
    tables: dict[str, Any],
    y_test: np.ndarray,
    confidence: float,
) -> list[Path]:
    """Write the tables, the plot data and the figures; return the files every run shares."""
    groups = list(dict.fromkeys((run.optimizer, run.setting) for run in runs))
    for name, setting in groups:
        members = [r for r in runs if r.optimizer == name and r.setting == setting]
        write_csv(
            CONFUSION_DIR / f"{file_label(name, setting)}.csv", confusion_frame(members, y_test)
        )
        counts = sum(run.evaluation.confusion for run in members)
        plot_confusion(
            counts,
            file_label(name, setting),
            FIGURES_DIR / f"confusion_{file_label(name, setting)}.png",
        )
    per_class = (
        pd.DataFrame(
            {
                file_label(name, setting): np.mean(
                    [
                        r.evaluation.per_class_accuracy
                        for r in runs
                        if r.optimizer == name and r.setting == setting
                    ],
                    axis=0,
                )
                for name, setting in groups
            }
        )
        .rename_axis("digit")
        .reset_index()
    )
    mean = tables["history_mean"]
    figures = []
    for setting in SETTINGS.values():
        part = mean[mean["setting"] == setting]
        for column in ("val_accuracy", "val_loss"):
            path = FIGURES_DIR / f"{file_label(column, setting)}.png"
            plot_history(part, column, path)
            figures.append(path)
    plot_tuning(tables["tuning"], FIGURES_DIR / "tuning.png")
    write_csv(REPORTS_DIR / "history.csv", tables["history"])
    write_csv(REPORTS_DIR / "history_mean.csv", mean)
    write_csv(REPORTS_DIR / "per_class_accuracy.csv", per_class)
    write_csv(REPORTS_DIR / "runs.csv", tables["runs"])
    write_csv(REPORTS_DIR / "tuning.csv", tables["tuning"])
    comparisons = tables["comparisons"]
    write_csv(
        REPORTS_DIR / "comparison.csv",
        pd.concat([t.assign(setting=s) for s, t in comparisons.items()], ignore_index=True),
    )
    write_text_atomic(
        REPORTS_DIR / "comparison.md",
        comparison_markdown(comparisons, tables["tuning"], confidence),
    )
    significance = tables["significance"]
    write_csv(
        REPORTS_DIR / "significance.csv",
        pd.concat([t.assign(setting=s) for s, t in significance.items()], ignore_index=True),
    )
    write_text_atomic(
        REPORTS_DIR / "significance.md",
        "\n".join(
            f"## {setting} learning rates\n\n{significance_markdown(table, confidence)}"
            for setting, table in significance.items()
        ),
    )
    return [
        REPORTS_DIR / "comparison.md",
        REPORTS_DIR / "comparison.csv",
        REPORTS_DIR / "significance.md",
        REPORTS_DIR / "runs.csv",
        REPORTS_DIR / "tuning.csv",
        REPORTS_DIR / "per_class_accuracy.csv",
        FIGURES_DIR / "tuning.png",
        *figures,
    ]


def log_to_mlflow(uri: str, runs: list[Run], artifacts: list[Path]) -> None:
    """Log each model's test metrics into its training run, and the shared artifacts into
    every run; a run missing from the current store is skipped with a warning."""
    client = mlflow.MlflowClient()
    for run in runs:
        run_id = run.train["mlflow_run_id"]
        try:
            client.get_run(run_id)
        except MlflowException:
            log.warning(
                "%s: MLflow run %s is not in %s; not logging its test metrics", run.key, run_id, uri
            )
            continue
        evaluation = run.evaluation
        metrics = {"test_accuracy": evaluation.test_accuracy, "test_loss": evaluation.test_loss}
        metrics |= {
            f"test_accuracy_digit_{d}": float(a)
            for d, a in enumerate(evaluation.per_class_accuracy)
        }
        now = get_current_time_millis()
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        confusion = FIGURES_DIR / f"confusion_{file_label(run.optimizer, run.setting)}.png"
        client.log_artifact(run_id, str(confusion), "evaluation")
        for path in artifacts:
            client.log_artifact(run_id, str(path), "comparison")


def read_history(key: str) -> pd.DataFrame:
    path = HISTORY_DIR / f"{key}.csv"
    if not path.exists():
        raise PipelineError(f"{path}: not found; run its training stage (dvc repro)")
    return pd.read_csv(path)


def evaluate(params: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Evaluate every model (each optimizer, seed and setting), write the reports and log
    them; return the comparison table of each setting."""
    names = validate_compare(params["compare"], validate_optimizer_names(params["optimizers"]))
    seeds = validate_train(params["train"]).seeds
    config = validate_evaluate(params["evaluate"])
    uri = tracking.connect()  # fail fast, before any model is loaded
    runtime.configure_threads()
    keys = [(name, seed, tuned) for tuned in SETTINGS for name in names for seed in seeds]
    train_metrics = {k: read_json(TRAIN_METRICS_DIR / f"{run_key(*k)}.json") for k in keys}
    histories = {k: read_history(run_key(*k)) for k in keys}
    tuning = tuning_table(names)
    x_test, y_test = load_arrays(PROCESSED_DIR, "x_test", "y_test")

    runs = []
    for k in keys:
        evaluation = evaluate_model(
            load_model(MODELS_DIR / f"{run_key(*k)}.keras"), x_test, y_test, config.batch_size
        )
        keras.backend.clear_session()
        log.info("%s: test accuracy %.4f", run_key(*k), evaluation.test_accuracy)
        runs.append(Run(*k, train_metrics[k], histories[k], evaluation))

    table = runs_table(runs, config.targets)
    by_setting = {s: table[table["setting"] == s] for s in SETTINGS.values()}
    tables: dict[str, Any] = {"runs": table, "history": history_table(runs), "tuning": tuning}
    tables["history_mean"] = history_mean(tables["history"])
    tables["comparisons"] = {
        s: comparison_table(t, config.reference_val_accuracy, config.targets, config.confidence)
        for s, t in by_setting.items()
    }
    tables["significance"] = {
        s: significance_table(t, config.confidence) for s, t in by_setting.items()
    }
    artifacts = write_reports(runs, tables, y_test, config.confidence)
    write_json_atomic(
        EVALUATE_METRICS_FILE, evaluate_metrics(tables["comparisons"], config.confidence)
    )
    log_to_mlflow(uri, runs, artifacts)
    return tables["comparisons"]


def main(argv: list[str]) -> None:
    for setting, table in evaluate(load_params()).items():
        print(f"{setting} learning rates:\n{table.to_markdown(index=False)}\n")


if __name__ == "__main__":
    run_stage(main)
