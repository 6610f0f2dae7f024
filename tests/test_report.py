"""Stage `report`: the page from what evaluate and gd_variants wrote (made up here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from stages import report
from stages.common import PipelineError

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


def blank_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, _ = plt.subplots(figsize=(1, 1))
    fig.savefig(path)
    plt.close(fig)


def test_markdown_tables_become_html() -> None:
    html = report.markdown_to_tables("## Tuned\n\n| a | b |\n|:--|--:|\n| 1 | <2> |\n")
    assert "<h3>Tuned</h3>" in html
    assert "<th>a</th><th>b</th>" in html and "<td>1</td><td>&lt;2&gt;</td>" in html
    assert ":--" not in html


def test_page_holds_the_tables_and_every_figure(project: Path, monkeypatch) -> None:
    monkeypatch.setattr(report, "log_to_mlflow", lambda runs: None)  # no training runs here
    reports = Path("reports")
    reports.mkdir()
    pd.DataFrame(
        {
            "setting": ["default", "default", "tuned", "tuned"],
            "optimizer": ["adam", "sgd", "adam", "sgd"],
            "seed": [42] * 4,
            "seconds_to_98": [60.0, None, 50.0, 90.0],
        }
    ).to_csv(reports / "runs.csv", index=False)
    pd.DataFrame(
        {
            "variant": ["batch", "stochastic", "mini-batch"],
            "batch_size": [64, 1, 16],
            "epoch": [1, 1, 1],
            "updates": [1, 64, 4],
            "seconds": [0.5, 3.0, 0.7],
            "val_accuracy": [0.1, 0.6, 0.3],
            "val_loss": [2.3, 1.2, 2.0],
        }
    ).to_csv(reports / "gd_variants.csv", index=False)
    (reports / "comparison.md").write_text(
        "## Learning rates from params.yaml\n\n| optimizer |\n|:--|\n| adam |\n"
    )
    (reports / "significance.md").write_text("## default learning rates\n\nNot testable.\n")
    for name in ("val_accuracy", "val_accuracy-tuned", "tuning"):
        blank_png(reports / "figures" / f"{name}.png")

    page = report.main([]) or report.REPORT_HTML.read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "<td>adam</td>" in page and "Not testable." in page and "<td>stochastic</td>" in page
    markdown = report.REPORT_MD.read_text()
    assert "![Time to the validation target](time_to_target.png)" in markdown
    assert "(../figures/tuning.png)" in markdown


def test_missing_inputs_name_the_stage_to_run(project: Path) -> None:
    with pytest.raises(PipelineError, match="reports/runs.csv: not found"):
        report.main([])
