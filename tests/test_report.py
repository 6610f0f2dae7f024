"""Stage `report`: the page built from what evaluate and gd_variants wrote, on the tiny
pipeline that conftest's `evaluated_template` runs once per session."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from mnist_optimizers import tunability
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.paths import REPORTS_DIR, reports_dir
from stages import report

from .conftest import WORKLOAD


def html_rows(page: str, first_cell: str) -> list[list[str]]:
    """The cells of every HTML table row of ``page`` whose first cell is ``first_cell``."""
    rows = re.findall(rf"<tr>\s*<td>{re.escape(first_cell)}</td>(.*?)</tr>", page, re.S)
    return [[first_cell, *re.findall(r"<td>(.*?)</td>", row, re.S)] for row in rows]


def markdown_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row of ``text`` whose first cell is ``first_cell``."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first_cell} ")
    ]


def test_the_page_shows_evaluates_tables_and_every_figure(evaluated: Path) -> None:
    report.main([])
    page = report.REPORT_HTML.read_text()
    # The profiles, the workload's five (accuracy per epoch in both settings, tuning,
    # tunability, time to target) and the gradient-descent variants.
    figures = report.figures(WORKLOAD)
    assert page.count("data:image/png;base64,") == 1 + len(figures) + 1 == 7
    assert "<h2>Across workloads</h2>" in page and f"<h2>{WORKLOAD}</h2>" in page
    scores = pd.read_csv(report.PROFILES_CSV)
    assert list(scores["optimizer"]) == ["sgd", "adam"] * 2
    assert {"score_steps", "score_seconds", f"{WORKLOAD}_steps", f"{WORKLOAD}_ratio"} <= set(scores)
    # The HTML tables come from comparison.csv, significance.csv and tunability.csv; they
    # read exactly like the Markdown, cell for cell: same numbers, same formatting.
    comparison = (reports_dir(WORKLOAD) / "comparison.md").read_text()
    tunable = tunability.markdown(pd.read_csv(reports_dir(WORKLOAD) / "tunability.csv"))
    for name in ("sgd", "adam"):
        assert html_rows(page, name) == markdown_rows(comparison, name) + markdown_rows(
            (reports_dir(WORKLOAD) / "significance.md").read_text(), name
        ) + markdown_rows(tunable, name)
    assert "<h3>Tuned hyperparameters: the learning rate (grid 0.001, 0.01, 0.1; each trial 60 training" in page
    runs = pd.read_csv(reports_dir(WORKLOAD) / "runs.csv")
    assert len(html_rows(page, "sgd")) == 2 + 2 + 1  # a comparison row and a pair per
    # setting, a row of expected best accuracies after 1, 2, 3 trials of its search
    assert markdown_rows(tunable, "sgd")[0][0:1] == ["sgd"] and "3 trials" in tunable
    assert f"<p>{html.escape(tunable.split(chr(10))[0])}</p>" in page
    assert "<td>stochastic</td>" in page
    lead = (reports_dir(WORKLOAD) / "significance.md").read_text().split("\n\n")[1]
    assert f"<p>{html.escape(lead)}</p>" in page
    markdown = report.REPORT_MD.read_text()
    assert comparison.replace("## ", "### ") in markdown
    assert f"![{WORKLOAD}: time to the target](time_to_target_{WORKLOAD}.png)" in markdown
    assert f"(../workloads/{WORKLOAD}/figures/tuning.png)" in markdown
    assert f"(../workloads/{WORKLOAD}/figures/tunability.png)" in markdown
    assert tunable in markdown
    assert "![Performance profiles](profiles.png)" in markdown

    client = mlflow.MlflowClient()
    for row in runs.itertuples():
        key = f"{row.optimizer}-{row.seed}" + ("-tuned" if row.setting == "tuned" else "")
        path = Path("metrics/train") / WORKLOAD / f"{key}.json"
        run_id = json.loads(path.read_text())["mlflow_run_id"]
        logged = {a.path for a in client.list_artifacts(run_id, "report")}
        assert {"report/report.html", "report/profiles.png",
                f"report/time_to_target_{WORKLOAD}.png"} <= logged  # fmt: skip


def test_a_cell_with_markup_is_shown_as_text(evaluated: Path) -> None:
    table = pd.read_csv(REPORTS_DIR / "gd_variants.csv")
    table.loc[0, "variant"] = "<script>alert(1)</script>"
    table.to_csv(REPORTS_DIR / "gd_variants.csv", index=False)
    report.main([])
    page = report.REPORT_HTML.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_missing_inputs_name_the_stage_to_run(project: Path) -> None:
    with pytest.raises(PipelineError, match="reports/workloads/mnist_cnn/runs.csv: not found"):
        report.main([])
    assert not report.REPORT_HTML.exists()
