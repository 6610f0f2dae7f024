"""One stage on one node of a Ray cluster: the body of each task of the parallel runner
(mnist_optimizers/parallel.py).

Shipped to the workers by value with proc.py (the standard library only, and a constant of
mlflow_runs): a worker needs the repo's requirements (Python, git, DVC, TensorFlow, MLflow,
Ray), not this package on its path.
The stage runs from a clone of the repository at the driver's commit:

1. `git clone` the repository, `git checkout <commit>`;
2. write the driver's params.yaml and dvc.lock into it (its `-S` values and the state of the
   stages upstream, so that DVC judges the stage exactly as the driver's `dvc status` did);
3. `dvc repro <stage>`: DVC restores the stage from the run cache if anyone ran it before,
   or runs it;
4. where the nodes share a DVC remote: `--pull` first, and `dvc push --run-cache` after. On one
   machine the clone uses the driver's own DVC cache, and there is nothing to move.

The clone is removed afterwards. With a remote, the DVC cache is one folder per machine,
shared by its tasks, so each input crosses the network once per machine.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# The task's id goes into every MLflow run its attempts start (mlflow_runs.run_tags): the
# driver ends the runs that a dead attempt left RUNNING.
from mnist_optimizers.mlflow_runs import PARALLEL_TASK_ENV
from mnist_optimizers.proc import CommandFailed, run_command

# Where each machine keeps its clones and its shared DVC cache, unless the task says.
WORK_DIR_ENV = "PIPELINE_PARALLEL_DIR"


@dataclass(frozen=True)
class TaskSpec:
    stage: str
    task_id: str
    repo_url: str
    commit: str
    params_yaml: str
    dvc_lock: str
    remote_url: str | None  # None: one machine, whose DVC cache is ``cache_dir``
    timeout: float  # seconds the stage may take
    cache_dir: str | None = None
    host: str | None = None  # the driver's host name, where the task must run without a remote
    cpus: int = 1
    gpus: float = 0
    env: dict[str, str] = field(default_factory=dict)  # MLFLOW_* from the driver
    submitted: float | None = None  # time.time() on the driver when it submitted the task


@dataclass
class TaskResult:
    stage: str
    node: str  # host name, and the Ray node's address where there is one
    attempt: str
    ran: bool  # False: restored from the run cache, nothing ran
    seconds: dict[str, float]  # waited (submitted to started), clone, repro, push, total
    log_tail: str = ""


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran (not restored, not skipped)."""
    return re.findall(r"^Running stage '([^']+)'", output, re.M)


def node_name() -> str:
    """This machine's name, and its Ray node address where Ray runs the task."""
    host = socket.gethostname()
    try:
        import ray  # the worker has it; the tests call run_task without Ray too
    except ImportError:
        return host
    if not ray.is_initialized():
        return host
    node = ray.get_runtime_context().get_node_id()[:8]
    return f"{host} ({ray.util.get_node_ip_address()}, node {node})"


def prepare_clone(spec: TaskSpec, clone: Path, env: dict[str, str], cache: Path) -> None:
    """The repository at the driver's commit in ``clone``, with its params, lock, cache and
    remote."""
    git = ["git", "-c", "advice.detachedHead=false"]
    run_command([*git, "clone", "--quiet", "--no-checkout", spec.repo_url, str(clone)],
                cwd=clone.parent, env=env, timeout=600, what=f"git clone {spec.repo_url}")  # fmt: skip
    try:
        run_command([*git, "checkout", "--quiet", spec.commit], cwd=clone, env=env, timeout=600)
    except CommandFailed:
        raise CommandFailed(
            f"commit {spec.commit[:12]} is not in {spec.repo_url}: push it there first"
        ) from None
    (clone / "params.yaml").write_text(spec.params_yaml)
    (clone / "dvc.lock").write_text(spec.dvc_lock)
    dvc = [sys.executable, "-m", "dvc"]
    if spec.remote_url:
        run_command([*dvc, "remote", "add", "--local", "--default", "--force", "shared",
                     spec.remote_url], cwd=clone, env=env, timeout=120)  # fmt: skip
    run_command([*dvc, "cache", "dir", "--local", str(cache)], cwd=clone, env=env, timeout=120)


def stage_env(spec: TaskSpec) -> dict[str, str]:
    """The worker's environment with the driver's MLflow settings, the task id, and
    TensorFlow's threads sized to the task's CPUs."""
    env = dict(os.environ) | spec.env
    env |= {
        PARALLEL_TASK_ENV: spec.task_id,
        "PIPELINE_JOBS": "1",
        "TF_NUM_INTRAOP_THREADS": str(spec.cpus),
        "TF_NUM_INTEROP_THREADS": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("DVC_STAGE", None)
    if not spec.gpus:  # a CPU task on a GPU machine leaves the GPUs to the tasks that asked
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def check_where(spec: TaskSpec) -> None:
    """Without a remote, the task must run on the driver's machine (its cache, its store);
    with one, it must log to a tracking server, never to a store on its own disk."""
    if spec.remote_url is None:
        if socket.gethostname() != spec.host:
            raise CommandFailed(
                f"this task runs on {socket.gethostname()}, not on {spec.host}: a cluster of "
                "several machines needs a default DVC remote and a tracking server"
            )
        return
    uri = spec.env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise CommandFailed(
            f"MLFLOW_TRACKING_URI is {uri or 'unset (a local mlflow.db)'}: a task on another "
            "machine cannot log there; give the driver the tracking server's http(s) URI"
        )


def run_task(spec: TaskSpec) -> TaskResult:
    """Run ``spec.stage`` from a fresh clone at ``spec.commit``; push what it made."""
    check_where(spec)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    if spec.submitted is not None:  # Ray's start, and the wait for a free CPU (or GPU)
        seconds["waited"] = max(0.0, time.time() - spec.submitted)
    work = Path(
        os.environ.get(WORK_DIR_ENV) or Path(tempfile.gettempdir(), "mnist-optimizers-parallel")
    )
    (work / "tasks").mkdir(parents=True, exist_ok=True)
    attempt = uuid.uuid4().hex[:8]
    clone = work / "tasks" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.stage)}-{attempt}"
    env = stage_env(spec)
    dvc = [sys.executable, "-m", "dvc"]
    try:
        prepare_clone(spec, clone, env, Path(spec.cache_dir or work / "dvc-cache"))
        seconds["clone"] = time.monotonic() - started
        mark = time.monotonic()
        pull = ["--pull"] if spec.remote_url else []
        output = run_command([*dvc, "repro", *pull, spec.stage], cwd=clone, env=env,
                             timeout=spec.timeout, what=f"dvc repro {spec.stage}")  # fmt: skip
        seconds["repro"] = time.monotonic() - mark
        ran = stages_run(output)
        if set(ran) - {spec.stage}:
            raise CommandFailed(
                f"dvc repro {spec.stage} also ran {', '.join(set(ran) - {spec.stage})}: the "
                "driver's dvc.lock did not match its commit"
            )
        if spec.remote_url:
            mark = time.monotonic()
            run_command([*dvc, "push", "--run-cache", spec.stage], cwd=clone, env=env,
                        timeout=1800)  # fmt: skip
            seconds["push"] = time.monotonic() - mark
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    seconds["total"] = time.monotonic() - started
    tail = "\n".join(output.splitlines()[-5:])
    return TaskResult(spec.stage, node_name(), attempt, bool(ran), seconds, tail)
