"""Stage `evaluate`: test every trained model and write the side-by-side comparison.

For each optimizer named in `compare` and each of `train.seeds` it loads models/<name>-<seed>.keras
(Keras safe mode) and metrics/train/<name>-<seed>.json, predicts the test set in large batches,
and writes:

- metrics/evaluate.json: the headline `dvc metrics show` and `dvc exp show` print, the mean
  test accuracy (%) per setting and optimizer; reports/summary.json: the rest, per optimizer
  the mean and confidence interval over seeds of validation and test accuracy, test loss
  and training seconds;
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

import mnist_optimizers.quiet  # noqa: F401  first: loads TensorFlow without its start-up log
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mnist_optimizers import files, mlflow_logs, mlflow_store, model, paths, plots, runtime, tables
from mnist_optimizers.cli import run_stage
from mnist_optimizers.fit import validate_train
from mnist_optimizers.model import validate_model
from mnist_optimizers.optimizers import validate_compare, validate_optimizer_names
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import FIGURES_DIR, REPORTS_DIR, run_key
from mnist_optimizers.tables import SETTINGS, Run, file_label
from mnist_optimizers.sections.evaluate import validate_evaluate

log = logging.getLogger(__name__)
# What evaluate reads of each training's and each search's metrics file.
TRAIN_KEYS = ("learning_rate", "val_accuracy", "train_seconds", "precision", "mlflow_run_id",
              "configuration")  # fmt: skip
TUNE_KEYS = ("trials", "epochs", "images", "best_learning_rate")


def write_reports(
    runs: list[Run], results: dict[str, Any], y_test, confidence: float
) -> list[Path]:
    """Write the tables, the plot data and the figures; return the files every run shares."""
    for name, setting in dict.fromkeys((run.optimizer, run.setting) for run in runs):
        label = file_label(name, setting)
        members = [r for r in runs if r.optimizer == name and r.setting == setting]
        files.write_csv(
            paths.CONFUSION_DIR / f"{label}.csv", tables.confusion_frame(members, y_test)
        )
        counts = sum(run.evaluation.confusion for run in members)
        plots.plot_confusion(counts, label, FIGURES_DIR / f"confusion_{label}.png")
    mean = results["history_mean"]
    figures = []
    for setting in SETTINGS.values():
        for column in ("val_accuracy", "val_loss"):
            path = FIGURES_DIR / f"{file_label(column, setting)}.png"
            title = tables.SECTION_TITLES[setting].lower()
            plots.plot_history(mean[mean["setting"] == setting], column, path, title)
            figures.append(path)
    plots.plot_tuning(results["tuning"], FIGURES_DIR / "tuning.png")
    files.write_csv(REPORTS_DIR / "history.csv", results["history"])
    files.write_csv(REPORTS_DIR / "history_mean.csv", mean)
    files.write_csv(REPORTS_DIR / "per_class_accuracy.csv", tables.per_class_table(runs))
    files.write_csv(paths.RUNS_FILE, results["runs"])
    files.write_csv(REPORTS_DIR / "tuning.csv", results["tuning"])
    comparisons, significance = results["comparisons"], results["significance"]
    files.write_csv(
        REPORTS_DIR / "comparison.csv",
        pd.concat([t.assign(setting=s) for s, t in comparisons.items()], ignore_index=True),
    )
    files.write_text_atomic(
        REPORTS_DIR / "comparison.md",
        tables.comparison_markdown(comparisons, results["tuning"], confidence),
    )
    files.write_csv(
        REPORTS_DIR / "significance.csv",
        pd.concat([t.assign(setting=s) for s, t in significance.items()], ignore_index=True),
    )
    files.write_text_atomic(
        REPORTS_DIR / "significance.md", tables.significance_markdown(significance, confidence)
    )
    shared = ["comparison.md", "comparison.csv", "significance.md", "runs.csv", "tuning.csv"]
    return [REPORTS_DIR / name for name in shared] + [
        REPORTS_DIR / "per_class_accuracy.csv",
        FIGURES_DIR / "tuning.png",
        *figures,
    ]


def log_to_mlflow(runs: list[Run], shared_files: list[Path], test_set: list) -> None:
    """Each model's test metrics into its training run, with the test set as its dataset
    (context `test`), and the shared files into every run."""
    test_logged = set()
    for run in runs:
        run_id = run.train["mlflow_run_id"]
        confusion = FIGURES_DIR / f"confusion_{file_label(run.optimizer, run.setting)}.png"
        logged = mlflow_logs.log_to_run(
            run.key,
            run_id,
            run.evaluation.metrics(),
            {confusion: "evaluation"} | {path: "comparison" for path in shared_files},
        )
        if logged and run_id not in test_logged:  # a reused run is one run
            mlflow_logs.log_datasets(test_set, run_id)
            test_logged.add(run_id)


def evaluate(params: dict[str, Any]) -> list[str]:
    """Evaluate every model (each optimizer, seed and setting), write the reports and log
    them; return the headline, a sentence per setting (who leads, by how much, is it real)."""
    names = validate_compare(params["compare"], validate_optimizer_names(params["optimizers"]))
    seeds = validate_train(params["train"]).seeds
    config = validate_evaluate(params["evaluate"])
    mlflow_store.connect()  # fail fast, before any model is loaded
    runtime.configure_threads()
    keys = [(name, seed, tuned) for tuned in SETTINGS for name in names for seed in seeds]
    train_metrics = {
        k: files.read_json(paths.TRAIN_METRICS_DIR / f"{run_key(*k)}.json", *TRAIN_KEYS)
        for k in keys
    }
    histories = {k: files.read_csv(paths.HISTORY_DIR / f"{run_key(*k)}.csv") for k in keys}
    tuning = tables.tuning_table(
        {name: files.read_json(paths.TUNE_DIR / f"{name}.json", *TUNE_KEYS) for name in names}
    )
    x_test, y_test = files.load_processed("test")

    runs = [
        Run(*k, train_metrics[k], histories[k], evaluation)
        for k, evaluation in model.evaluate_models(
            keys, train_metrics, x_test, y_test, config,
            validate_model(params["model"]).num_classes,
        ).items()  # fmt: skip
    ]

    table = tables.runs_table(runs, config.targets)
    by_setting = {s: table[table["setting"] == s] for s in SETTINGS.values()}
    history = tables.history_table(runs)
    results: dict[str, Any] = {
        "runs": table,
        "history": history,
        "history_mean": tables.history_mean(history),
        "tuning": tuning,
        "comparisons": {
            s: tables.comparison_table(
                t, config.reference_val_accuracy, config.targets, config.confidence
            )
            for s, t in by_setting.items()
        },
        "significance": {
            s: tables.significance_table(t, config.confidence) for s, t in by_setting.items()
        },
    }
    shared_files = write_reports(runs, results, y_test, config.confidence)
    files.write_json_atomic(
        paths.SUMMARY_FILE, tables.summary_metrics(by_setting, config.confidence)
    )
    files.write_json_atomic(
        paths.EVALUATE_METRICS_FILE, tables.headline_metrics(results["comparisons"])
    )
    test_set = mlflow_logs.datasets(
        {"x_test": x_test, "y_test": y_test}, files.read_json(paths.DATA_SUMMARY_FILE)
    )
    log_to_mlflow(runs, shared_files, test_set)
    return tables.headline(results["comparisons"], results["significance"])


def main(argv: list[str]) -> None:
    for sentence in evaluate(load_params()):
        log.info("%s", sentence)
    log.info("tables: %s; the page: dvc repro report", REPORTS_DIR / "comparison.md")


if __name__ == "__main__":
    run_stage(main)
