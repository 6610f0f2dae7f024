"""Stage `report`: one page a person would rather look at than read.

Builds reports/report.html (self-contained: figures embedded) and reports/report.md from what
`evaluate` and `gd_variants` wrote (the HTML tables from their CSV files): the default and tuned comparison tables, the significance
of the differences, and the figures (validation accuracy per epoch with a band over seeds,
accuracy against learning rate, time to target, the gradient-descent variants). Logs the page
and its new figures to every training run in MLflow.

    python -m stages.report
"""

from __future__ import annotations

import base64
import html
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mnist_optimizers import mlflow_logs, mlflow_store, plots, stats, tables
from mnist_optimizers.cli import run_stage
from mnist_optimizers.files import read_csv, read_json, write_text_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import (
    FIGURES_DIR,
    GD_VARIANTS_FILE,
    REPORT_DIR,
    REPORTS_DIR,
    RUNS_FILE,
    TRAIN_METRICS_DIR,
    run_key,
)

REPORT_HTML = REPORT_DIR / "report.html"
REPORT_MD = REPORT_DIR / "report.md"
FIGURES = [
    (FIGURES_DIR / "val_accuracy.png", "Validation accuracy per epoch (rates from params)"),
    (FIGURES_DIR / "val_accuracy-tuned.png", "Validation accuracy per epoch (tuned rates)"),
    (FIGURES_DIR / "tuning.png", "Validation accuracy against learning rate"),
    (REPORT_DIR / "time_to_target.png", "Time to the validation target"),
    (REPORT_DIR / "gd_variants.png", "Batch, stochastic and mini-batch gradient descent"),
]
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;}"
    "table{border-collapse:collapse;font-size:0.85em;margin:1em 0;}"
    "td,th{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right;}"
    "img{max-width:100%;}"
    ".answer{font-size:1.15em;line-height:1.5;}"
)

log = logging.getLogger(__name__)


def embedded(path: Path, alt: str) -> str:
    """An HTML figure with the PNG at ``path`` inside it."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def comparison_html(comparison: pd.DataFrame, tuning: pd.DataFrame, confidence: float) -> str:
    """Per setting (comparison.csv's `setting` column), a heading and the readable table."""
    parts = []
    for setting, table in comparison.groupby("setting", sort=False):
        parts.append(f"<h3>{html.escape(tables.section_title(setting, tuning))}</h3>")
        parts.append(tables.readable_table(table, confidence).to_html(index=False, border=0))
    return "\n".join(parts)


def significance_html(significance: pd.DataFrame, confidence: float) -> str:
    """Per setting, a heading, the sentence that says what is significant, and the table."""
    parts = []
    for setting, table in significance.groupby("setting", sort=False):
        table = table.drop(columns="setting")
        parts.append(f"<h3>{html.escape(tables.SECTION_TITLES[setting])}</h3>")
        parts.append(f"<p>{html.escape(tables.significance_lead(table, confidence))}</p>")
        readable = tables.readable_significance(table, confidence)
        parts.append(readable.to_html(index=False, border=0))
    return "\n".join(parts)


def report(params: dict[str, Any]) -> Path:
    """Draw the report's figures, write the page as Markdown and HTML, log it to MLflow."""
    section = params["evaluate"]
    targets = stats.validate_targets(section.get("targets", list(stats.DEFAULT_TARGETS)))
    confidence = stats.validate_confidence(section.get("confidence", 0.95))
    runs = read_csv(RUNS_FILE)
    gd = read_csv(GD_VARIANTS_FILE)
    comparison = read_csv(REPORTS_DIR / "comparison.csv")
    significance = read_csv(REPORTS_DIR / "significance.csv")
    plots.plot_time_to_target(runs, targets[0], REPORT_DIR / "time_to_target.png")
    plots.plot_gd_variants(gd, REPORT_DIR / "gd_variants.png")
    answer = tables.headline(
        dict(list(comparison.groupby("setting", sort=False))),
        dict(list(significance.groupby("setting", sort=False))),
    )
    lead = (
        f"Mean test accuracy over {int(comparison['seeds'].max())} seeds; significance by "
        f"Welch's t-test on test accuracy, Holm-corrected over the pairs, at {1 - confidence:g}."
    )
    gd_last = gd_variants_table(gd)
    write_text_atomic(REPORT_MD, report_markdown(answer, lead, gd_last))
    tuning = read_csv(REPORTS_DIR / "tuning.csv")
    body = [
        "<h1>Optimizer comparison</h1>",
        "<ul class='answer'>"
        + "".join(f"<li>{html.escape(sentence)}</li>" for sentence in answer)
        + "</ul>",
        f"<p>{html.escape(lead)}</p>",
        comparison_html(comparison, tuning, confidence),
        "<h2>Which differences are real</h2>",
        significance_html(significance, confidence),
        "<h2>Figures</h2>",
        *(embedded(path, alt) for path, alt in FIGURES),
        "<h2>Gradient-descent variants</h2>",
        gd_last.to_html(index=False, border=0),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Optimizer comparison</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    write_text_atomic(REPORT_HTML, page)
    log_to_mlflow(runs)
    return REPORT_HTML


def gd_variants_table(gd: pd.DataFrame) -> pd.DataFrame:
    """Each gradient-descent variant's last epoch: batch size, updates, seconds, accuracy."""
    columns = {"batch_size": "batch size", "seconds": "seconds (all epochs)",
               "val_accuracy": "val accuracy (last epoch)"}  # fmt: skip
    last = gd.groupby("variant", sort=False).tail(1)
    return last[["variant", "batch_size", "updates", "seconds", "val_accuracy"]].rename(
        columns=columns
    )


def report_markdown(answer: list[str], lead: str, gd_last: pd.DataFrame) -> str:
    """The page in Markdown: the answer, the tables evaluate wrote, the figures."""
    return "\n".join(
        [
            "# Optimizer comparison",
            "",
            *(f"- {sentence}" for sentence in answer),
            "",
            lead,
            "",
            (REPORTS_DIR / "comparison.md").read_text(encoding="utf-8"),
            "## Which differences are real",
            "",
            (REPORTS_DIR / "significance.md").read_text(encoding="utf-8").replace("## ", "### "),
            "## Gradient-descent variants",
            "",
            gd_last.to_markdown(index=False),
            "",
            *(f"![{alt}]({os.path.relpath(path, REPORT_DIR)})" for path, alt in FIGURES),
            "",
        ]
    )


def log_to_mlflow(runs: pd.DataFrame) -> None:
    """The page and its two new figures into every training run, under `report/`; a run
    missing from the store is skipped with a warning (mlflow_logs.log_to_run)."""
    mlflow_store.connect()
    files = {path: "report" for path in sorted(REPORT_DIR.iterdir()) if path.is_file()}
    for row in runs.itertuples():
        key = run_key(row.optimizer, row.seed, row.setting == "tuned")
        run_id = read_json(TRAIN_METRICS_DIR / f"{key}.json", "mlflow_run_id")["mlflow_run_id"]
        mlflow_logs.log_to_run(key, run_id, {}, files)


def main(argv: list[str]) -> None:
    print(report(load_params()))


if __name__ == "__main__":
    run_stage(main)
