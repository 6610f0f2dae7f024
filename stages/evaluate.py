"""Stage `evaluate@<workload>`: test every trained model of one workload and write the
side-by-side comparison.

For each optimizer named in `compare` and each of `train.seeds` it loads the workload's
models/<workload>/<name>-<seed>.keras (Keras safe mode) and its metrics file, predicts the test
set in large batches, and writes, in reports/workloads/<workload>/:

- metrics/evaluate/<workload>.json: the headline `dvc metrics show` and `dvc exp show` print,
  the mean test accuracy (%) per setting and optimizer; summary.json: the rest, per optimizer
  the mean and confidence interval over seeds of validation and test accuracy, test loss
  and training seconds;
- comparison.{md,csv}: that table, with the reference accuracies beside ours and the time to
  each of the workload's validation targets; runs.csv: one row per optimizer and seed;
- significance.{md,csv}: every pair of optimizers, the difference of their mean test
  accuracies, whether it is significant (Welch's t-test) or within `evaluate.margin` (TOST),
  both Holm-corrected, the verdict and the seeds an inconclusive pair needs;
- tunability.csv and figures/tunability.png: the best validation accuracy to expect after
  k trials of each optimizer's search;
- per_class_accuracy.csv, history.csv, history_mean.csv and confusion/<name>.csv (the data
  behind `dvc plots show`) and figures/*.png;
- into MLflow: each model's test metrics into its own training run, and the tables and
  figures as artifacts of every run, so the UI's run comparison shows them.

    dvc repro evaluate@mnist_cnn
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads Keras on train.backend, quietly
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from mnist_optimizers import (files, mlflow_logs, mlflow_store, model, paths, plots, runtime,
                              tables, tunability, workloads)
from mnist_optimizers.cli import run_stage, stage_args
from mnist_optimizers.fit import validate_train
from mnist_optimizers.optimizers import validate_compare, validate_optimizer_names
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import run_key
from mnist_optimizers.tables import SETTINGS, Run, file_label
from mnist_optimizers.sections.evaluate import validate_evaluate

log = logging.getLogger(__name__)
# What evaluate reads of each training's and each search's metrics file.
TRAIN_KEYS = ("learning_rate", "val_accuracy", "train_seconds", "precision", "mlflow_run_id",
              "configuration")  # fmt: skip
TUNE_KEYS = ("space", "trials", "epochs", "images", "best", "pruner")


def write_reports(
    out: Path, runs: list[Run], results: dict[str, Any], y_test, confidence: float
) -> list[Path]:
    """Write the tables, the plot data and the figures into ``out``; return the files every
    run shares."""
    figures_dir = out / paths.FIGURES_NAME
    for name, setting in dict.fromkeys((run.optimizer, run.setting) for run in runs):
        label = file_label(name, setting)
        members = [r for r in runs if r.optimizer == name and r.setting == setting]
        files.write_csv(
            out / paths.CONFUSION_NAME / f"{label}.csv", tables.confusion_frame(members, y_test)
        )
        counts = sum(run.evaluation.confusion for run in members)
        plots.plot_confusion(counts, label, figures_dir / f"confusion_{label}.png")
    mean = results["history_mean"]
    figures = []
    for setting in SETTINGS.values():
        for column in ("val_accuracy", "val_loss"):
            path = figures_dir / f"{file_label(column, setting)}.png"
            title = tables.SECTION_TITLES[setting].lower()
            plots.plot_history(mean[mean["setting"] == setting], column, path, title)
            figures.append(path)
    plots.plot_tuning(results["tuning"], figures_dir / "tuning.png")
    tunable = tunability.tunability_table(results["tuning"])
    plots.plot_tunability(tunable, figures_dir / "tunability.png")
    files.write_csv(out / "tunability.csv", tunable)
    files.write_csv(out / "history.csv", results["history"])
    files.write_csv(out / "history_mean.csv", mean)
    files.write_csv(out / "per_class_accuracy.csv", tables.per_class_table(runs))
    files.write_csv(out / paths.RUNS_NAME, results["runs"])
    files.write_csv(out / "tuning.csv", results["tuning"])
    comparisons, significance = results["comparisons"], results["significance"]
    files.write_csv(
        out / "comparison.csv",
        pd.concat([t.assign(setting=s) for s, t in comparisons.items()], ignore_index=True),
    )
    files.write_text_atomic(
        out / "comparison.md",
        tables.comparison_markdown(comparisons, results["tuning"], confidence),
    )
    files.write_csv(
        out / "significance.csv",
        pd.concat([t.assign(setting=s) for s, t in significance.items()], ignore_index=True),
    )
    files.write_text_atomic(
        out / "significance.md", tables.significance_markdown(significance, confidence)
    )
    shared = ["comparison.md", "comparison.csv", "significance.md", "runs.csv", "tuning.csv"]
    return [out / name for name in shared] + [
        out / "per_class_accuracy.csv",
        figures_dir / "tuning.png",
        figures_dir / "tunability.png",
        *figures,
    ]


def log_to_mlflow(out: Path, runs: list[Run], shared_files: list[Path], test_set: list) -> None:
    """Each model's test metrics into its training run, with the test set as its dataset
    (context `test`), and the shared files into every run."""
    test_logged = set()
    for run in runs:
        run_id = run.train["mlflow_run_id"]
        label = file_label(run.optimizer, run.setting)
        confusion = out / paths.FIGURES_NAME / f"confusion_{label}.png"
        logged = mlflow_logs.log_to_run(
            f"{out.name}/{run.key}",
            run_id,
            run.evaluation.metrics(),
            {confusion: "evaluation"} | {path: "comparison" for path in shared_files},
        )
        if logged and run_id not in test_logged:  # a reused run is one run
            mlflow_logs.log_datasets(test_set, run_id)
            test_logged.add(run_id)


def evaluate(name: str, params: dict[str, Any]) -> list[str]:
    """Evaluate every model of workload ``name`` (each optimizer, seed and setting), write
    the reports and log them; return the headline, a sentence per setting (who leads, by
    how much, is it real)."""
    workload = workloads.workload(params, name)
    names = validate_compare(params["compare"], validate_optimizer_names(params["optimizers"]))
    train_config = validate_train(params["train"])
    config = validate_evaluate(params["evaluate"])
    mlflow_store.connect()  # fail fast, before any model is loaded
    runtime.start(train_config.backend)
    keys = [(o, seed, tuned) for tuned in SETTINGS for o in names for seed in train_config.seeds]
    train_metrics = {
        k: files.read_json(paths.train_metrics_file(name, run_key(*k)), *TRAIN_KEYS)
        for k in keys
    }
    histories = {k: files.read_csv(paths.history_file(name, run_key(*k))) for k in keys}
    tuning = tables.tuning_table(
        {o: files.read_json(paths.tune_file(name, o), *TUNE_KEYS) for o in names}
    )
    x_test, y_test = files.load_processed(name, "test")
    data_summary = files.read_json(paths.data_summary_file(name))
    runs = [
        Run(*k, train_metrics[k], histories[k], evaluation)
        for k, evaluation in model.evaluate_models(
            name, keys, train_metrics, x_test, y_test, config, workload.model.num_classes
        ).items()
    ]
    steps_per_epoch = -(-data_summary["counts"]["train"] // train_config.batch_size)
    table = tables.runs_table(runs, workload.targets, steps_per_epoch)
    by_setting = {s: table[table["setting"] == s] for s in SETTINGS.values()}
    history = tables.history_table(runs)
    results: dict[str, Any] = {
        "runs": table,
        "history": history,
        "history_mean": tables.history_mean(history),
        "tuning": tuning,
        "comparisons": {
            s: tables.comparison_table(
                t, workload.reference_val_accuracy, workload.targets, config.confidence
            )
            for s, t in by_setting.items()
        },
        "significance": {
            s: tables.significance_table(t, config.confidence, config.margin)
            for s, t in by_setting.items()
        },
    }
    out = paths.reports_dir(name)
    shared_files = write_reports(out, runs, results, y_test, config.confidence)
    files.write_json_atomic(
        out / paths.SUMMARY_NAME, tables.summary_metrics(by_setting, config.confidence)
    )
    files.write_json_atomic(
        paths.evaluate_metrics_file(name), tables.headline_metrics(results["comparisons"])
    )
    test_set = mlflow_logs.datasets({"x_test": x_test, "y_test": y_test}, data_summary)
    log_to_mlflow(out, runs, shared_files, test_set)
    return tables.headline(results["comparisons"], results["significance"])


def main(argv: list[str]) -> None:
    params = load_params()
    (name,) = stage_args("evaluate", argv, ("workload",), params)
    for sentence in evaluate(name, params):
        log.info("%s: %s", name, sentence)
    log.info("tables: %s; the page: dvc repro report", paths.reports_dir(name) / "comparison.md")


if __name__ == "__main__":
    run_stage(main)
