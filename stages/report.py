"""Stage `report`: one page a person would rather look at than read.

Builds reports/report/report.html (self-contained: figures embedded) and report.md from what
each workload's `evaluate` and `gd_variants` wrote. First, across workloads: what holds on every
one and what does not, and AlgoPerf's performance profiles (the steps and seconds to each
workload's validation target, as a ratio to the fastest optimizer there; rho(tau) and the
score), as a figure and a table (profiles.csv). Then per workload: the default and tuned
comparison tables, the significance of the differences, and the figures (validation accuracy
per epoch with a band over seeds, accuracy against learning rate, time to target). Last, the
gradient-descent variants. Logs the page and its figures to every training run in MLflow.

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

from mnist_optimizers import (mlflow_logs, mlflow_store, paths, plots, profiles, tables,
                              tunability, workloads)
from mnist_optimizers.cli import run_stage
from mnist_optimizers.files import read_csv, read_json, write_csv, write_text_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import GD_VARIANTS_FILE, REPORT_DIR, run_key
from mnist_optimizers.sections.evaluate import validate_evaluate

REPORT_HTML = REPORT_DIR / "report.html"
REPORT_MD = REPORT_DIR / "report.md"
PROFILES_PNG = REPORT_DIR / "profiles.png"
PROFILES_CSV = REPORT_DIR / "profiles.csv"
GD_PNG = REPORT_DIR / "gd_variants.png"
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


def figures(workload: str) -> list[tuple[Path, str]]:
    """A workload's figures on the page: evaluate's, and the report's time to target."""
    folder = paths.reports_dir(workload) / paths.FIGURES_NAME
    return [
        (folder / "val_accuracy.png", f"{workload}: validation accuracy per epoch (default rates)"),
        (folder / "val_accuracy-tuned.png", f"{workload}: validation accuracy per epoch (tuned)"),
        (folder / "tuning.png", f"{workload}: validation accuracy against learning rate"),
        (folder / "tunability.png", f"{workload}: expected best validation accuracy after "
                                    "k trials of the search"),
        (REPORT_DIR / f"time_to_target_{workload}.png", f"{workload}: time to the target"),
    ]  # fmt: skip


def report(params: dict[str, Any]) -> Path:
    """Draw the report's figures, write the page as Markdown and HTML, log it to MLflow."""
    compared = workloads.compared(params)
    confidence = validate_evaluate(params["evaluate"]).confidence
    read = {name: {} for name in ("runs", "comparison", "significance", "tuning", "tunability")}
    for w in compared:
        for name in read:
            read[name][w.name] = read_csv(paths.reports_dir(w.name) / f"{name}.csv")
        plots.plot_time_to_target(read["runs"][w.name], w.target,
                                  REPORT_DIR / f"time_to_target_{w.name}.png")  # fmt: skip
    targets = {w.name: w.target for w in compared}
    settings = list(tables.SETTINGS.values())
    scores = profiles.score_table(read["runs"], targets, settings)
    write_csv(PROFILES_CSV, scores)
    plots.plot_profiles({s: profiles.profiles(read["runs"], targets, s) for s in settings},
                        PROFILES_PNG)  # fmt: skip
    gd = read_csv(GD_VARIANTS_FILE)
    plots.plot_gd_variants(gd, GD_PNG)
    across = tables.across_workloads(read["comparison"], read["significance"], scores)
    seeds = max(int(t["seeds"].max()) for t in read["comparison"].values())
    lead = (
        f"Mean test accuracy over {seeds} seeds; significance by Welch's t-test on test "
        f"accuracy, Holm-corrected over the pairs, at {1 - confidence:g}. Performance profiles "
        f"as MLCommons AlgoPerf's: the median over seeds of the training steps to each "
        f"workload's target ({', '.join(f'{w} {t:g}' for w, t in targets.items())}), as a "
        f"ratio to the fastest optimizer on that workload; the score is the area under the "
        f"profile from 1 to {profiles.MAX_RATIO:g}, divided by {profiles.MAX_RATIO - 1:g}."
    )
    gd_last = gd_variants_table(gd)
    def by_setting(kind: str, workload: str) -> dict[str, pd.DataFrame]:
        return dict(list(read[kind][workload].groupby("setting", sort=False)))

    sections = {w: tables.headline(by_setting("comparison", w), by_setting("significance", w))
                for w in targets}  # fmt: skip
    readable = tables.readable_scores(scores, targets)
    write_text_atomic(REPORT_MD, report_markdown(across, lead, readable, sections, gd_last,
                                                  read["tunability"]))
    body = [
        "<h1>Optimizer comparison</h1>",
        "<h2>Across workloads</h2>",
        "<ul class='answer'>"
        + "".join(f"<li>{html.escape(sentence)}</li>" for sentence in across)
        + "</ul>",
        f"<p>{html.escape(lead)}</p>",
        readable.to_html(index=False, border=0),
        embedded(PROFILES_PNG, "Performance profiles"),
    ]
    for name, part in sections.items():
        body += [
            f"<h2>{html.escape(name)}</h2>",
            "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in part) + "</ul>",
            tables.comparison_html(read["comparison"][name], read["tuning"][name], confidence),
            "<h3>Which differences are real</h3>",
            tables.significance_html(read["significance"][name], confidence),
            "<h3>How easy to tune</h3>",
            f"<p>{html.escape(tunability.lead(read['tunability'][name]))}</p>",
            tunability.wide_table(read["tunability"][name]).to_html(index=False, border=0),
            *(embedded(path, alt) for path, alt in figures(name)),
        ]
    body += ["<h2>Gradient-descent variants</h2>", embedded(GD_PNG, "Gradient-descent variants"),
             gd_last.to_html(index=False, border=0)]  # fmt: skip
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Optimizer comparison</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    write_text_atomic(REPORT_HTML, page)
    log_to_mlflow(read["runs"])
    return REPORT_HTML


def gd_variants_table(gd: pd.DataFrame) -> pd.DataFrame:
    """Each gradient-descent variant's last epoch: batch size, updates, seconds, accuracy."""
    columns = {"batch_size": "batch size", "seconds": "seconds (all epochs)",
               "val_accuracy": "val accuracy (last epoch)"}  # fmt: skip
    last = gd.groupby("variant", sort=False).tail(1)
    kept = ["variant", "batch_size", "updates", "seconds", "val_accuracy"]
    return last[kept].rename(columns=columns)


def report_markdown(across: list[str], lead: str, scores: pd.DataFrame,
                    sections: dict[str, list[str]], gd_last: pd.DataFrame,
                    tunabilities: dict[str, pd.DataFrame]) -> str:  # fmt: skip
    """The page in Markdown: across workloads, each workload's tables and figures, GD's."""
    def image(path: Path, alt: str) -> str:
        return f"![{alt}]({os.path.relpath(path, REPORT_DIR)})"

    lines = ["# Optimizer comparison", "", "## Across workloads", "",
             *(f"- {sentence}" for sentence in across), "", lead, "",
             scores.to_markdown(index=False, disable_numparse=True), "",
             image(PROFILES_PNG, "Performance profiles"), ""]  # fmt: skip
    for name, part in sections.items():
        folder = paths.reports_dir(name)
        lines += [
            f"## {name}",
            "",
            *(f"- {sentence}" for sentence in part),
            "",
            (folder / "comparison.md").read_text(encoding="utf-8").replace("## ", "### "),
            f"### Which differences are real ({name})",
            "",
            (folder / "significance.md").read_text(encoding="utf-8").replace("## ", "#### "),
            f"### How easy to tune ({name})",
            "",
            tunability.markdown(tunabilities[name]),
            *(image(path, alt) for path, alt in figures(name)),
            "",
        ]
    lines += ["## Gradient-descent variants", "", gd_last.to_markdown(index=False), "",
              image(GD_PNG, "Batch, stochastic and mini-batch gradient descent"), ""]  # fmt: skip
    return "\n".join(lines)


def log_to_mlflow(runs: dict[str, pd.DataFrame]) -> None:
    """The page and its figures into every training run of every workload, under `report/`;
    a run missing from the store is skipped with a warning (mlflow_logs.log_to_run)."""
    mlflow_store.connect()
    files = {path: "report" for path in sorted(REPORT_DIR.iterdir()) if path.is_file()}
    for workload, table in runs.items():
        for row in table.itertuples():
            key = run_key(row.optimizer, row.seed, row.setting == "tuned")
            run_id = read_json(paths.train_metrics_file(workload, key),
                               "mlflow_run_id")["mlflow_run_id"]  # fmt: skip
            mlflow_logs.log_to_run(f"{workload}/{key}", run_id, {}, files)


def main(argv: list[str]) -> None:
    print(report(load_params()))


if __name__ == "__main__":
    run_stage(main)
