"""Team mode against real servers: 8 experiments queued with `dvc exp run --queue` and run
by `dvc queue start -j 2`, logged once each to the SQLite store and to an MLflow tracking
server on PostgreSQL; that server's run comparison seen in headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from . import servers
from .conftest import copy_project, tiny_params, write_params

pytestmark = pytest.mark.e2e

EPOCHS = 2
# The four optimizers at two learning rates each: 8 experiments, each training one model.
EXPERIMENTS = {
    f"{name}-lr{lr}": (name, lr)
    for name, rates in {
        "sgd": (0.05, 0.1),
        "adagrad": (0.05, 0.1),
        "adam": (0.001, 0.003),
        "rmsprop": (0.001, 0.003),
    }.items()
    for lr in rates
}
QUEUE_TIMEOUT_SECONDS = 900


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{output[-5000:]}"
    return output


def dvc(root: Path, env: dict[str, str], *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], root, env)


def make_repo(root: Path, tiny_mirror) -> dict[str, str]:
    """The project in a fresh git repo at ``root`` on tiny data; the environment to run it."""
    mirror, sha256 = tiny_mirror
    root.mkdir(parents=True)
    copy_project(root)
    params = tiny_params(sha256)
    params["train"]["epochs"] = EPOCHS
    write_params(root, params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= servers.tool_env() | {
        "MNIST_MIRROR": str(mirror),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return env


def queue_statuses(root: Path, env: dict[str, str]) -> dict[str, str]:
    """Experiment name -> status, from `dvc queue status` (task, name, created, status)."""
    statuses = {}
    for line in dvc(root, env, "queue", "status").splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in EXPERIMENTS:
            statuses[words[1]] = words[-1]
    return statuses


def run_queue(root: Path, env: dict[str, str], jobs: int = 2) -> dict[str, str]:
    """Queue every experiment of EXPERIMENTS (the `train` stages only), run the queue
    ``jobs`` at a time, wait for it; return each experiment's final status."""
    for exp, (name, lr) in EXPERIMENTS.items():
        dvc(
            root, env, "exp", "run", "--queue", "train", "--name", exp,
            "-S", f"compare=[{name}]", "-S", f"optimizers.{name}.learning_rate={lr}",
        )  # fmt: skip
    assert set(queue_statuses(root, env)) == set(EXPERIMENTS)  # all 8 queued
    dvc(root, env, "queue", "start", "--jobs", str(jobs))
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            statuses = queue_statuses(root, env)
            if not {"Queued", "Running"} & set(statuses.values()):
                return statuses
            time.sleep(3)
        pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_SECONDS} s: {statuses}")
    finally:
        subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "stop"], cwd=root, env=env, capture_output=True
        )


def check_each_experiment_logged_once(client: mlflow.MlflowClient) -> list:
    """Every experiment is exactly one finished MLflow run with its learning rate, a
    val_accuracy per epoch and a logged model; return the runs."""
    experiment = client.get_experiment_by_name("mnist-optimizers")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_exp: dict[str, list] = {}
    for r in runs:
        by_exp.setdefault(r.data.tags.get("dvc.experiment", ""), []).append(r)
    assert {exp: len(rs) for exp, rs in by_exp.items()} == dict.fromkeys(EXPERIMENTS, 1)
    for exp, (name, lr) in EXPERIMENTS.items():
        (r,) = by_exp[exp]
        assert r.info.status == "FINISHED"
        assert r.info.run_name == f"{name}-42"
        assert r.data.tags["optimizer"] == name
        assert float(r.data.params["optimizer.learning_rate"]) == lr
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        (model,) = r.outputs.model_outputs
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert "MLmodel" in files, files
    return runs


def test_queued_experiments_reach_the_sqlite_store_exactly_once(tmp_path, tiny_mirror) -> None:
    root = tmp_path / "project"
    env = make_repo(root, tiny_mirror)

    statuses = run_queue(root, env)

    assert statuses == dict.fromkeys(EXPERIMENTS, "Success")
    # Queued experiments run in copies of the repo; DVC_ROOT leads them to its mlflow.db.
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    check_each_experiment_logged_once(client)


@pytest.fixture(scope="module")
def server_experiments(tmp_path_factory, tiny_mirror):
    """A tracking server on PostgreSQL that the 8 queued experiments logged to."""
    folder = tmp_path_factory.mktemp("team")
    with servers.postgres(folder / "pg") as pg:
        backend = servers.create_database(pg, "mlflow_queue")
        with servers.tracking_server(backend, folder / "artifacts") as url:
            root = folder / "project"
            env = make_repo(root, tiny_mirror) | {"MLFLOW_TRACKING_URI": url}
            statuses = run_queue(root, env)
            yield root, url, statuses


def test_queued_experiments_reach_the_tracking_server_exactly_once(server_experiments) -> None:
    root, url, statuses = server_experiments
    assert statuses == dict.fromkeys(EXPERIMENTS, "Success")
    check_each_experiment_logged_once(mlflow.MlflowClient(url))
    # Nothing fell back to a local store.
    assert not (root / "mlflow.db").exists()
