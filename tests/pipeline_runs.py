"""What the end-to-end tests of the reproduced pipeline (conftest's `reproduced`) read of a
project: its MLflow runs by name, the stages a DVC command ran; and a copy of it for a test
to change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow

from mnist_optimizers.parallel_task import stages_run

from .cli import check_no_processes_left, copy_repo
from .conftest import E2E_OPTIMIZERS as OPTIMIZERS
from .conftest import WORKLOAD


def client_for(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def runs_by_name(root: Path) -> dict[str, list]:
    """The project's MLflow runs by name, oldest first; the tests' workload's by their name
    in it (`adam-42` for `mnist_cnn/adam-42`, `tune adam` for `tune mnist_cnn/adam`), any
    other workload's whole."""
    client = client_for(root)
    experiment = client.get_experiment_by_name("mnist-optimizers")
    result: dict[str, list] = {}
    for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
        name = r.info.run_name.replace(f"{WORKLOAD}/", "", 1)
        result.setdefault(name, []).append(r)
    return result


def runs_by_name_or_empty(root: Path) -> dict[str, list]:
    if not (root / "mlflow.db").exists():
        return {}
    client = client_for(root)
    if client.get_experiment_by_name("mnist-optimizers") is None:
        return {}
    return runs_by_name(root)


def copy_for_a_test(
    source: Path, env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the project at ``source`` for one test to change, and its environment; no
    process started in it outlives the test."""
    copy = tmp_path / "project"
    env = copy_repo(source, copy, env)
    yield copy, env
    check_no_processes_left(env)


TRAINING = [
    *(f"train@{WORKLOAD}-{n}-42" for n in OPTIMIZERS),
    *(f"tune@{WORKLOAD}-{n}" for n in OPTIMIZERS),
    *(f"train_tuned@{WORKLOAD}-{n}-42" for n in OPTIMIZERS),
    "gd_variants",
]
DATA = [f"download@{WORKLOAD}", f"preprocess@{WORKLOAD}"]
# The report reads the champion register wrote: it comes last.
AFTER_TRAINING = [f"evaluate@{WORKLOAD}", f"register@{WORKLOAD}", "report"]


def model_stages_run(output: str) -> list[str]:
    """The stages run after `check_params` (which any edit of params.yaml runs first), but
    `trajectories`: it depends only on `optimizers` and `trajectories`, and DVC may run it
    at any point of the order."""
    ran = stages_run(output)
    if "check_params" in ran:
        assert ran[0] == "check_params", ran  # params.yaml is checked before any stage runs
    return [stage for stage in ran if stage not in ("trajectories", "check_params")]
