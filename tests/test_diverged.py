"""A training whose loss goes NaN is recorded as diverged, never as a result: in MLflow, in
reports/runs.csv, the comparison and significance tables, the report and the champion
choice. A copy of the evaluated tiny pipeline, in process, whose SGD default runs are
trained again with SGD's default rate at 1e6 (they diverge in their first epoch); then
evaluate, report and register, as `dvc repro` runs them after that change."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from .conftest import WORKLOAD, edit_params

pytestmark = pytest.mark.e2e


@pytest.fixture
def diverged_pipeline(evaluated: Path) -> Path:
    import keras

    from stages import evaluate, register, report, train

    edit_params({"optimizers.sgd.learning_rate": 1e6})
    for seed in ("42", "43"):
        keras.backend.clear_session()  # as a stage's own process starts
        train.main([WORKLOAD, "sgd", seed])
    evaluate.main([WORKLOAD])
    report.main([])
    register.main([WORKLOAD])
    return evaluated


def test_a_diverged_run_is_no_number_anywhere(diverged_pipeline: Path) -> None:
    root = diverged_pipeline
    runs = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "runs.csv")
    lost = runs[(runs["setting"] == "default") & (runs["optimizer"] == "sgd")]
    assert list(lost["diverged"]) == [True, True]
    assert lost[["val_accuracy", "test_accuracy", "test_loss"]].isna().all().all()
    assert not runs[runs["optimizer"] == "adam"]["diverged"].any()

    client = mlflow.MlflowClient()
    for seed in (42, 43):
        metrics = json.loads((root / "metrics" / "train" / WORKLOAD / f"sgd-{seed}.json").read_text())
        run = client.get_run(metrics["mlflow_run_id"])
        assert run.info.status == "FAILED" and "pipeline.diverged" in run.data.tags
        assert "test_accuracy" not in run.data.metrics  # evaluate measured nothing of it

    comparison = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "comparison.csv")
    sgd = comparison[(comparison["setting"] == "default") & (comparison["optimizer"] == "sgd")]
    assert sgd["diverged"].tolist() == [2] and sgd["test_accuracy_%"].isna().all()
    significance = pd.read_csv(root / "reports" / "workloads" / WORKLOAD / "significance.csv")
    default_pairs = significance[significance["setting"] == "default"]
    assert "sgd" not in {*default_pairs["optimizer_a"], *default_pairs["optimizer_b"]}

    summary = json.loads((root / "reports" / "workloads" / WORKLOAD / "summary.json").read_text())
    assert summary["default"]["sgd"]["diverged"] == 2
    assert summary["default"]["sgd"]["test_accuracy"] is None

    page = (root / "reports" / "report" / "report.html").read_text()
    assert "sgd diverged in 2 of 2 seeds" in page and "2 (2 diverged)" in page

    champion = json.loads((root / "reports" / "workloads" / WORKLOAD / "champion.json").read_text())
    assert not (champion["optimizer"] == "sgd" and champion["setting"] == "default")
