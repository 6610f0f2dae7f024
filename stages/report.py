"""Stage `report`: one page a person would rather look at than read.

Builds reports/report.html (self-contained: figures embedded) and reports/report.md from what
`evaluate` and `gd_variants` wrote: the default and tuned comparison tables, the significance
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

import matplotlib
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from stages import tracking
from stages.common import (
    REPORTS_DIR,
    TRAIN_METRICS_DIR,
    PipelineError,
    atomic_path,
    load_params,
    read_json,
    run_stage,
    validate_evaluate,
    write_text_atomic,
)

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402 - after choosing the headless backend

FIGURES_DIR = REPORTS_DIR / "figures"  # evaluate's
REPORT_DIR = REPORTS_DIR / "report"  # this stage's: the page and the figures it draws
REPORT_HTML = REPORT_DIR / "report.html"
REPORT_MD = REPORT_DIR / "report.md"

log = logging.getLogger(__name__)


def read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path}: not found; run the stage that writes it (dvc repro)")
    return pd.read_csv(path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_time_to_target(runs: pd.DataFrame, target: float, path: Path) -> None:
    """Median seconds over seeds to reach ``target`` per optimizer and setting; a hatched
    empty bar says 'never'."""
    column = f"seconds_to_{100 * target:g}"
    table = runs.groupby(["optimizer", "setting"], sort=False)[column].median().unstack()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    width = 0.8 / len(table.columns)
    for i, setting in enumerate(table.columns):
        positions = [x + i * width for x in range(len(table))]
        values = table[setting]
        ax.bar(positions, values.fillna(0), width, label=f"{setting} learning rate")
        for x, value in zip(positions, values, strict=True):
            if pd.isna(value):
                ax.text(x, 0, "never", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks([x + width * (len(table.columns) - 1) / 2 for x in range(len(table))])
    ax.set_xticklabels(table.index, rotation=30, ha="right")
    ax.set(ylabel="seconds (median over seeds)", title=f"Time to {100 * target:g}% validation")
    ax.legend()
    save_figure(fig, path)


def plot_gd_variants(table: pd.DataFrame, path: Path) -> None:
    """Validation accuracy against updates and against seconds, a line per variant."""
    fig, (by_updates, by_seconds) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for variant, group in table.groupby("variant", sort=False):
        by_updates.plot(group["updates"], group["val_accuracy"], marker="o", label=variant)
        by_seconds.plot(group["seconds"], group["val_accuracy"], marker="o", label=variant)
    by_updates.set(xscale="log", xlabel="updates (log)", ylabel="validation accuracy")
    by_seconds.set(xlabel="seconds", ylabel="validation accuracy")
    by_updates.set_title("Gradient-descent variants: accuracy against updates")
    by_seconds.set_title("... and against seconds")
    for ax in (by_updates, by_seconds):
        ax.grid(alpha=0.3)
    by_updates.legend()
    save_figure(fig, path)


def embedded(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def markdown_to_tables(text: str) -> str:
    """The evaluate stage's Markdown (headings and pipe tables) as HTML."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            header, *body = rows
            out.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in header))
            out.append("</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
            out.append("</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= set(":-") for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h3>{html.escape(line[3:])}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


FIGURES = [
    (FIGURES_DIR / "val_accuracy.png", "Validation accuracy per epoch (rates from params)"),
    (FIGURES_DIR / "val_accuracy-tuned.png", "Validation accuracy per epoch (tuned rates)"),
    (FIGURES_DIR / "tuning.png", "Validation accuracy against learning rate"),
    (REPORT_DIR / "time_to_target.png", "Time to the validation target"),
    (REPORT_DIR / "gd_variants.png", "Batch, stochastic and mini-batch gradient descent"),
]


def report(params: dict[str, Any]) -> Path:
    config = validate_evaluate(params["evaluate"])
    runs = read_csv(REPORTS_DIR / "runs.csv")
    gd = read_csv(REPORTS_DIR / "gd_variants.csv")
    comparison = (REPORTS_DIR / "comparison.md").read_text(encoding="utf-8")
    significance = (REPORTS_DIR / "significance.md").read_text(encoding="utf-8")
    plot_time_to_target(runs, config.targets[0], REPORT_DIR / "time_to_target.png")
    plot_gd_variants(gd, REPORT_DIR / "gd_variants.png")

    gd_last = gd.groupby("variant", sort=False).tail(1)[
        ["variant", "batch_size", "updates", "seconds", "val_accuracy"]
    ]
    markdown = "\n".join(
        [
            "# Optimizer comparison",
            "",
            comparison,
            "## Which differences are real",
            "",
            significance.replace("## ", "### "),
            "## Gradient-descent variants",
            "",
            gd_last.to_markdown(index=False),
            "",
            *(f"![{alt}]({os.path.relpath(path, REPORT_DIR)})" for path, alt in FIGURES),
            "",
        ]
    )
    write_text_atomic(REPORT_MD, markdown)
    body = [
        "<h1>Optimizer comparison</h1>",
        markdown_to_tables(comparison),
        "<h2>Which differences are real</h2>",
        markdown_to_tables(significance),
        "<h2>Figures</h2>",
        *(embedded(path, alt) for path, alt in FIGURES),
        "<h2>Gradient-descent variants</h2>",
        gd_last.to_html(index=False, border=0),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Optimizer comparison</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;}"
        "table{border-collapse:collapse;font-size:0.85em;margin:1em 0;}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.5em;text-align:right;}"
        "img{max-width:100%;}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    write_text_atomic(REPORT_HTML, page)
    log_to_mlflow(runs)
    return REPORT_HTML


def log_to_mlflow(runs: pd.DataFrame) -> None:
    """The page and its two new figures into every training run, under `report/`."""
    tracking.connect()
    client = mlflow.MlflowClient()
    for row in runs.itertuples():
        key = f"{row.optimizer}-{row.seed}" + ("-tuned" if row.setting == "tuned" else "")
        run_id = read_json(TRAIN_METRICS_DIR / f"{key}.json")["mlflow_run_id"]
        try:
            client.log_artifacts(run_id, str(REPORT_DIR), "report")
        except MlflowException as exc:
            log.warning("%s: not logging the report to MLflow run %s: %s", key, run_id, exc)


def main(argv: list[str]) -> None:
    print(report(load_params()))


if __name__ == "__main__":
    run_stage(main)
