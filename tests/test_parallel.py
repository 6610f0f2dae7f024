"""The parallel runner's reading of DVC's output (its end-to-end run is in test_pipeline.py)."""

from __future__ import annotations

import json

import pytest

from stages import parallel
from stages.common import PipelineError


def test_stale_stages_of_each_round_in_pipeline_order() -> None:
    status = {
        "train@adam-42": [{"changed deps": {"params.yaml": "modified"}}],
        "tune@adam": [{"changed deps": {"params.yaml": "modified"}}],
        "train_tuned@adam-42": [{"changed deps": {"metrics/tune/adam.json": "deleted"}}],
        "train@sgd-42": ["changed outs"],
        "evaluate": [{"changed deps": {"models": "modified"}}],
    }
    first, second = (parallel.stale_stages(json.dumps(status), r) for r in parallel.ROUNDS)
    assert first == ["train@adam-42", "tune@adam", "train@sgd-42"]
    assert second == ["train_tuned@adam-42"]
    assert parallel.stale_stages("{}", parallel.ROUNDS[0]) == []
    assert parallel.stale_stages("", parallel.ROUNDS[0]) == []


def test_queued_experiment_name() -> None:
    output = "Queued experiment 'irony-nowt' for future execution.\n"
    assert parallel.queued_task(output) == "irony-nowt"
    with pytest.raises(PipelineError, match="named no experiment"):
        parallel.queued_task("ERROR: something else\n")


def test_task_states_only_for_our_tasks() -> None:
    status = """Task     Name        Created    Status
1a2b3c4  ready-fees  05:43 PM   Success
9f9f9f9  old-run     04:00 PM   Failed
5e6f7a8  hulky-quey  05:43 PM   Running

Worker status: 1 active, 0 idle
"""
    assert parallel.task_states(status, ["ready-fees", "hulky-quey"]) == {
        "ready-fees": "Success",
        "hulky-quey": "Running",
    }


def test_a_bad_job_count_is_refused() -> None:
    with pytest.raises(PipelineError, match="-j: expected a positive number of jobs, got 0"):
        parallel.run_parallel(0)
