"""Faults in the middle of a training stage, run as DVC runs it (`python -m stages.train`):
Ctrl-C, SIGTERM, SIGKILL, and the tracking server going away. Each must stop the stage
cleanly or be cleaned up by the next run, never leave a half-written output or a run that
says RUNNING forever, and the next run must give the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from . import servers
from .conftest import WORKLOAD, edit_params

pytestmark = pytest.mark.e2e

EPOCHS = 40  # on the tiny data: long enough to be interrupted mid-training
# The stage runs in the test's project folder, with the code of this checkout.
CODE = {"PYTHONPATH": str(servers.PROJECT_ROOT)}
OUTPUTS = tuple(f"{folder}/{WORKLOAD}/adam-42.{ext}" for folder, ext in
                (("models", "keras"), ("metrics/history", "csv"), ("metrics/train", "json")))  # fmt: skip


def long_training(project: Path, **train: Any) -> None:
    edit_params(
        {f"train.{key}": value for key, value in ({"epochs": EPOCHS} | train).items()}, project
    )


def start_training(project: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m stages.train adam 42` as DVC starts it from a terminal, with its output in
    train.log. SIGINT is reset to its default in the child: a test run started in the
    background (`cmd &` in a script) ignores SIGINT, its children inherit that, and Python
    then installs no Ctrl-C handler, so the stage would train on through the test's SIGINT."""
    with (project / "train.log").open("w") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "stages.train", WORKLOAD, "adam", "42"],
            cwd=project,
            env=servers.tool_env(CODE | (env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def store_client(uri: str | None = None) -> mlflow.MlflowClient:
    """A client of ``uri``, by default the test project's store (the `project` fixture sets
    the URI). It opens the store as a stage does: a new SQLite store's tables are created under
    the store's lock and with its timeout, since the stage may be creating them right now."""
    from mnist_optimizers import mlflow_store

    uri = mlflow_store.with_sqlite_timeout(uri or os.environ["MLFLOW_TRACKING_URI"])
    mlflow_store.init_sqlite_store(uri)
    return mlflow.MlflowClient(uri)


def wait_for_epochs(uri: str, process: subprocess.Popen, project: Path, epochs: int = 2):
    """Wait until the stage's MLflow run has logged ``epochs`` epochs; return the run."""
    c = store_client(uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (project / "train.log").read_text()[-3000:]
        experiment = c.get_experiment_by_name("mnist-optimizers")
        if experiment is not None:
            for run in c.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
                if len(c.get_metric_history(run.info.run_id, "val_accuracy")) >= epochs:
                    return run
        time.sleep(0.2)
    pytest.fail(f"no epoch logged in 120 s:\n{(project / 'train.log').read_text()[-3000:]}")


def train_to_the_end(project: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "stages.train", WORKLOAD, "adam", "42"],
        cwd=project, env=servers.tool_env(CODE), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((project / "metrics" / "train" / WORKLOAD / "adam-42.json").read_text())


def train_uninterrupted(folder: Path, tiny_mirror, **train: Any) -> tuple[dict, list[np.ndarray]]:
    """The metrics and weights of a training never interrupted, in ``folder``."""
    import keras

    from stages import download, preprocess

    mirror, sha256 = tiny_mirror
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MNIST_MIRROR", str(mirror))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        from .conftest import tiny_params, write_params

        write_params(folder, tiny_params(sha256))
        long_training(folder, **train)
        download.main([WORKLOAD])
        preprocess.main([WORKLOAD])
        metrics = train_to_the_end(folder)
    weights = keras.models.load_model(folder / "models" / WORKLOAD / "adam-42.keras").get_weights()
    return metrics, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_mirror) -> tuple[dict, list[np.ndarray]]:
    return train_uninterrupted(tmp_path_factory.mktemp("uninterrupted"), tiny_mirror)


# Resume: few epochs of small batches, stopped early, so that the weights are still moving
# (on the tiny data 40 epochs saturate the loss, and any order of batches would end equal).
RESUME = {"epochs": 6, "batch_size": 4, "resume": True}


def test_ctrl_c_mid_epoch_stops_the_stage_cleanly_and_the_rerun_matches(
    processed: Path, uninterrupted
) -> None:
    """SIGINT mid-epoch. SIGTERM takes the same path from the signal handler on (test_cli:
    exit 143 and its message; test_parallel: a cancelled task's stage ends its run KILLED)."""
    import keras

    long_training(processed)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    process = start_training(processed)
    try:
        run = wait_for_epochs(uri, process, processed)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=30)
        stopped_in = time.monotonic() - sent
    finally:
        process.kill()
    log = (processed / "train.log").read_text()
    assert returncode == 130, log[-3000:]
    assert stopped_in < 10, f"took {stopped_in:.1f} s to stop"
    assert "no output written" in log and "Traceback" not in log, log[-3000:]
    assert not [p for p in OUTPUTS if (processed / p).exists()]
    assert store_client().get_run(run.info.run_id).info.status == "KILLED"

    metrics = train_to_the_end(processed)  # what `dvc repro` runs next

    expected_metrics, expected_weights = uninterrupted
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert metrics[key] == expected_metrics[key], key
    weights = keras.models.load_model(processed / "models" / WORKLOAD / "adam-42.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected_weights, strict=True))


def test_after_sigkill_the_next_run_marks_the_orphan_failed(processed: Path) -> None:
    long_training(processed)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    process = start_training(processed)
    try:
        orphan = wait_for_epochs(uri, process, processed)
        process.send_signal(signal.SIGKILL)  # nothing can clean up after this
        process.wait(timeout=30)
    finally:
        process.kill()
    assert store_client().get_run(orphan.info.run_id).info.status == "RUNNING"
    assert not [p for p in OUTPUTS if (processed / p).exists()]

    train_to_the_end(processed)

    ended = store_client().get_run(orphan.info.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags["pipeline.end_reason"] == "its process died (found later)"
    statuses = [
        r.info.status
        for r in store_client().search_runs(
            [ended.info.experiment_id], "tags.`dvc.stage` = 'train@mnist_cnn-adam-42'"
        )
    ]
    assert sorted(statuses) == ["FAILED", "FINISHED"]


def test_a_running_run_of_a_live_process_is_left_alone(processed: Path) -> None:
    """Another experiment training the same stage right now (dvc queue -j 2) is not an orphan."""
    from mnist_optimizers import mlflow_runs, mlflow_store

    mlflow_store.connect()
    experiment_id = mlflow_store.setup_experiment("mnist-optimizers")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # stages."])
    try:
        c = mlflow.MlflowClient()
        live = c.create_run(
            experiment_id,
            tags={"dvc.stage": "train@mnist_cnn-adam-42", "pipeline.host": os.uname().nodename,
                  "pipeline.pid": str(sleeper.pid)},
        )  # fmt: skip
        other_host = c.create_run(
            experiment_id,
            tags={"dvc.stage": "train@mnist_cnn-adam-42", "pipeline.host": "elsewhere", "pipeline.pid": "1"},
        )
        assert mlflow_runs.end_orphaned_runs(experiment_id, "train@mnist_cnn-adam-42") == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert mlflow_runs.end_orphaned_runs(experiment_id, "train@mnist_cnn-adam-42") == [live.info.run_id]
    assert c.get_run(other_host.info.run_id).info.status == "RUNNING"


def test_the_tracking_server_going_away_mid_training_fails_the_stage_cleanly(
    processed: Path, tmp_path: Path
) -> None:
    long_training(processed)
    with servers.postgres() as pg:
        backend = servers.create_database(pg, "mlflow_faults")
        with servers.tracking_server(backend, tmp_path / "artifacts") as url:
            env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
            process = start_training(processed, env)
            try:
                wait_for_epochs(url, process, processed)
                # The block ends here: the server stops mid-training.
            except BaseException:
                process.kill()
                raise
    try:
        code = process.wait(timeout=120)
    finally:
        process.kill()
    log = (processed / "train.log").read_text()
    assert code == 1, log[-3000:]
    assert f"MLflow tracking store {url} failed during run" in log, log[-3000:]
    assert "nothing was written" in log
    assert not [p for p in OUTPUTS if (processed / p).exists()]


def test_with_resume_an_interrupted_training_continues_from_its_last_epoch(
    processed: Path, tmp_path_factory, tiny_mirror
) -> None:
    import keras

    expected_metrics, expected_weights = train_uninterrupted(
        tmp_path_factory.mktemp("uninterrupted-resume"), tiny_mirror, **RESUME
    )
    long_training(processed, **RESUME)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    process = start_training(processed)
    try:
        wait_for_epochs(uri, process, processed, epochs=2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
    finally:
        process.kill()
    (checkpoint,) = (processed / ".checkpoints").iterdir()
    done = len(json.loads((checkpoint / "history.json").read_text()))
    # MLflow had 2 epochs when the signal went; the checkpoint of the 2nd may not be
    # written yet (it follows the logging), and then the last complete one is the 1st.
    assert 1 <= done < RESUME["epochs"]
    assert not [p for p in OUTPUTS if (processed / p).exists()]

    metrics = train_to_the_end(processed)

    history = (processed / "metrics" / "history" / WORKLOAD / "adam-42.csv").read_text().splitlines()
    assert len(history) == RESUME["epochs"] + 1  # header + every epoch, resumed ones included
    finished = [
        r
        for r in store_client().search_runs(
            [store_client().get_experiment_by_name("mnist-optimizers").experiment_id],
            "attributes.status = 'FINISHED'",
        )
    ]
    (run,) = finished
    assert run.data.tags["resumed_after_epoch"] == str(done)
    steps = [m.step for m in store_client().get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(steps) == list(range(1, RESUME["epochs"] + 1))
    assert not (processed / ".checkpoints" / checkpoint.name).exists()  # removed once complete
    weights = keras.models.load_model(processed / "models" / WORKLOAD / "adam-42.keras").get_weights()
    gaps = {k: abs(metrics[k] - expected_metrics[k]) for k in ("loss", "val_loss", "val_accuracy")}
    same_weights = all(np.array_equal(a, b) for a, b in zip(weights, expected_weights, strict=True))
    print(f"resumed after epoch {done}: differences {gaps}, identical weights: {same_weights}")
    assert gaps["val_accuracy"] == 0 and same_weights
