"""A training whose loss goes NaN is recorded as diverged, never as a result: in MLflow, in
reports/runs.csv, the comparison and significance tables, the report and the champion
choice. The tiny pipeline, in process, with SGD's default rate at 1e6 (it diverges in its
first epoch) and Adam's at its default."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from .conftest import run_tiny_pipeline

pytestmark = pytest.mark.e2e


@pytest.fixture
def diverged_pipeline(project: Path) -> Path:
    from stages import register, report

    run_tiny_pipeline({"optimizers.sgd.learning_rate": 1e6})
    report.main([])
    register.main([])
    return project


def test_a_diverged_run_is_no_number_anywhere(diverged_pipeline: Path) -> None:
    root = diverged_pipeline
    runs = pd.read_csv(root / "reports" / "runs.csv")
    lost = runs[(runs["setting"] == "default") & (runs["optimizer"] == "sgd")]
    assert list(lost["diverged"]) == [True, True]
    assert lost[["val_accuracy", "test_accuracy", "test_loss"]].isna().all().all()
    assert not runs[runs["optimizer"] == "adam"]["diverged"].any()

    client = mlflow.MlflowClient()
    for seed in (42, 43):
        metrics = json.loads((root / "metrics" / "train" / f"sgd-{seed}.json").read_text())
        run = client.get_run(metrics["mlflow_run_id"])
        assert run.info.status == "FAILED" and "pipeline.diverged" in run.data.tags
        assert "test_accuracy" not in run.data.metrics  # evaluate measured nothing of it

    comparison = pd.read_csv(root / "reports" / "comparison.csv")
    sgd = comparison[(comparison["setting"] == "default") & (comparison["optimizer"] == "sgd")]
    assert sgd["diverged"].tolist() == [2] and sgd["test_accuracy_%"].isna().all()
    significance = pd.read_csv(root / "reports" / "significance.csv")
    default_pairs = significance[significance["setting"] == "default"]
    assert "sgd" not in {*default_pairs["optimizer_a"], *default_pairs["optimizer_b"]}

    summary = json.loads((root / "reports" / "summary.json").read_text())
    assert summary["default"]["sgd"]["diverged"] == 2
    assert summary["default"]["sgd"]["test_accuracy"] is None

    page = (root / "reports" / "report" / "report.html").read_text()
    assert "sgd diverged in 2 of 2 seeds" in page and "2 (2 diverged)" in page

    champion = json.loads((root / "reports" / "champion.json").read_text())
    assert not (champion["optimizer"] == "sgd" and champion["setting"] == "default")
