"""MLflow runs: their tags, a context that always ends them, and the one sweep that ends the
runs a dead process left RUNNING."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator

import mlflow
import psutil
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException

from mnist_optimizers.errors import Terminated
from mnist_optimizers.proc import CommandFailed, run_command
from mnist_optimizers.mlflow_store import TrackingError

HOST_TAG, PID_TAG = "pipeline.host", "pipeline.pid"
END_REASON_TAG = "pipeline.end_reason"
DIVERGED_TAG = "pipeline.diverged"  # on a run whose loss went NaN or infinite
# A task of the parallel runner (mnist_optimizers/parallel_task.py) names itself in this
# variable; its runs carry it as a tag, so that the runs of a dead attempt can be ended.
PARALLEL_TASK_ENV, PARALLEL_TASK_TAG = "PIPELINE_PARALLEL_TASK", "pipeline.parallel_task"
# Where a training or search run trained: "CPU", or "GPU:0 (<model>, compute capability 9.0)".
DEVICE_TAG = "train.device"
BACKEND_TAG = "backend"  # the Keras backend a run trained on: tensorflow or jax

log = logging.getLogger(__name__)


def git_commit() -> str | None:
    """The commit checked out in the working directory, or None outside git."""
    try:
        return run_command(["git", "rev-parse", "HEAD"], timeout=10).strip()
    except (OSError, CommandFailed):
        return None


def run_tags(stage: str) -> dict[str, str]:
    """Tags that tie a run to its DVC stage, git commit and DVC experiment, and to the
    process that logs it (so a later run can tell it was orphaned: end_orphaned_runs)."""
    tags = {
        "dvc.stage": os.environ.get("DVC_STAGE", stage),
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = exp_name
    if task := os.environ.get(PARALLEL_TASK_ENV):
        tags[PARALLEL_TASK_TAG] = task
    return tags


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process of this machine running a pipeline stage (the
    number may have been reused by another program since)."""
    try:
        return "stages." in " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:  # zombies included
        return False
    except psutil.AccessDenied:
        return True


def end_left_running(
    client: mlflow.MlflowClient,
    experiment_ids: list[str],
    query: str,
    status: str,
    reason: str,
    keep: Callable[[Run], bool] = lambda run: False,
) -> list[str]:
    """End ``status`` (FAILED, KILLED) every run matching ``query`` that is still RUNNING,
    unless ``keep`` says it is alive; tag each with ``reason``; return their ids."""
    running = client.search_runs(
        experiment_ids, f"{query} and attributes.status = 'RUNNING'", max_results=1000
    )
    ended = []
    for run in running:
        if keep(run):
            continue
        client.set_tag(run.info.run_id, END_REASON_TAG, reason)
        client.set_terminated(run.info.run_id, status)
        ended.append(run.info.run_id)
        log.warning(
            "MLflow run %s (%s) was left RUNNING: %s; marked %s",
            run.info.run_id, run.info.run_name, reason, status,
        )  # fmt: skip
    return ended


def end_orphaned_runs(experiment_id: str, stage: str) -> list[str]:
    """Mark FAILED the runs of ``stage`` still RUNNING whose process on this machine is gone
    (killed with SIGKILL, or the machine lost power): nothing else will ever end them.
    Runs of other machines, or of live processes (a parallel experiment), are left alone."""
    host = socket.gethostname()

    def alive_or_elsewhere(run: Run) -> bool:
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        return tags.get(HOST_TAG) != host or not pid.isdigit() or process_alive(int(pid))

    return end_left_running(
        mlflow.MlflowClient(), [experiment_id], f"tags.`dvc.stage` = '{stage}'",
        RunStatus.to_string(RunStatus.FAILED), "its process died (found later)",
        keep=alive_or_elsewhere,
    )  # fmt: skip


def _end_run_quietly(status: RunStatus) -> None:
    """End the active run (MLflow drops it from its stack first); if the store itself is
    what failed, the run stays RUNNING there, and the next run of the stage ends it."""
    try:
        mlflow.end_run(RunStatus.to_string(status))
    except Exception:  # noqa: BLE001 - the store is down: nothing more can be recorded
        log.warning("could not mark the MLflow run %s", RunStatus.to_string(status))


@contextlib.contextmanager
def tracked_run(
    experiment_id: str, run_name: str, tags: dict[str, str], nested: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """Start an MLflow run (a child of the active one when ``nested``); end it FINISHED,
    KILLED on Ctrl-C or SIGTERM, or FAILED on any error. A top-level run first ends the
    orphaned runs of its stage. If the store stops answering mid-run, the stage fails with
    a TrackingError: it never succeeds with its run missing from MLflow."""
    if not nested:
        end_orphaned_runs(experiment_id, tags["dvc.stage"])
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, nested=nested)
    try:
        yield run
    except (KeyboardInterrupt, Terminated):
        _end_run_quietly(RunStatus.KILLED)
        raise
    except MlflowException as exc:
        _end_run_quietly(RunStatus.FAILED)
        raise TrackingError(
            f"MLflow tracking store {mlflow.get_tracking_uri()} failed during run "
            f"{run.info.run_id} ({run_name}): {exc.message}; nothing was written. "
            "Rerun when it answers, or point MLFLOW_TRACKING_URI elsewhere."
        ) from None
    except BaseException:
        _end_run_quietly(RunStatus.FAILED)
        raise
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run.info.run_id:  # not ended diverged
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def end_diverged(epoch: int) -> None:
    """End the active run FAILED with the tag `pipeline.diverged`: its numbers are no
    result (the stage itself succeeds, and the tables say which runs diverged)."""
    mlflow.set_tag(DIVERGED_TAG, f"loss not finite at epoch {epoch}")
    mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
