"""One stage on one machine of a Ray cluster: the body of each task of the cluster runner
(mnist_optimizers/cluster.py).

Standard library only, and shipped to the workers by value: a worker needs the repo's
requirements (Python, git, DVC, TensorFlow, MLflow, Ray), not this package on its path. The
stage itself runs from a clone of the repository at the driver's commit:

1. `git clone` the repository, `git checkout <commit>`;
2. write the driver's params.yaml and dvc.lock into it (its `-S` values and the state of the
   stages upstream, so that DVC judges the stage exactly as the driver's `dvc status` did);
3. `dvc repro --pull <stage>`: DVC fetches the run cache and the stage's inputs from the
   remote, then restores the stage from the run cache if anyone ran it before, or runs it;
4. `dvc push --run-cache <stage>`: its outputs and the run cache go back to the remote.

The clone is removed afterwards; the DVC cache is one folder per machine, shared by its tasks,
so each input crosses the network once per machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Where each machine keeps its clones and its shared DVC cache, unless the task says.
WORK_DIR_ENV = "PIPELINE_CLUSTER_DIR"
# The task's id, in every MLflow run its attempts start (tracking.run_tags): the driver ends
# FAILED the runs that a dead attempt left RUNNING.
TASK_ENV = "PIPELINE_CLUSTER_TASK"
# From SIGTERM to the stage (it ends its MLflow run KILLED) to SIGKILL, on cancellation.
STOP_GRACE_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


class TaskFailed(Exception):
    """The stage failed for a reason of its own (its message), or the repository could not
    be prepared: retrying on another machine would fail the same way."""


@dataclass(frozen=True)
class TaskSpec:
    stage: str
    task_id: str
    repo_url: str
    commit: str
    params_yaml: str
    dvc_lock: str
    remote_url: str
    cpus: int = 1
    gpus: float = 0
    env: dict[str, str] = field(default_factory=dict)  # MLFLOW_* from the driver
    timeout: float = 7200.0
    submitted: float | None = None  # time.time() on the driver when it submitted the task


@dataclass
class TaskResult:
    stage: str
    node: str  # host name, and the Ray node's address where there is one
    attempt: str
    ran: bool  # False: restored from the run cache, nothing ran
    seconds: dict[str, float]  # waited (submitted to started), clone, repro, push, total
    log_tail: str = ""


def set_parent_death_signal() -> None:
    """In the child, before exec: SIGTERM when the process that started it (the Ray worker)
    dies. The stage watches its own parent (mnist_optimizers/cli.py), so the whole chain
    stops, and its MLflow run ends KILLED instead of training on for nobody."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, what: str) -> str:
    """Run ``argv`` in its own process group; its output, or TaskFailed with it. Stopped
    with its group (SIGTERM, then SIGKILL) on a timeout or when the task is cancelled."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=set_parent_death_signal,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process)
            raise TaskFailed(f"{what} did not finish within {timeout:.0f} s (stopped)") from None
        except BaseException:  # cancelled (Ray raises KeyboardInterrupt in the task)
            stop_group(process)
            raise
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code != 0:
        raise TaskFailed(f"{what} failed (exit status {code}):\n{text[-6000:]}")
    return text


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process`` (the stage ends its run KILLED), then
    SIGKILL what is left after STOP_GRACE_SECONDS."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran (not restored, not skipped)."""
    return re.findall(r"^Running stage '([^']+)'", output, re.M)


def node_name() -> str:
    """This machine's name, and its Ray node address where Ray runs the task."""
    host = socket.gethostname()
    try:
        import ray  # the worker has it; the tests call run_task without Ray too

        if ray.is_initialized():
            context = ray.get_runtime_context()
            address = ray.util.get_node_ip_address()
            return f"{host} ({address}, node {context.get_node_id()[:8]})"
    except Exception:  # noqa: BLE001 - a name for the log only
        pass
    return host


def prepare_clone(spec: TaskSpec, clone: Path, env: dict[str, str], cache: Path) -> None:
    """The repository at the driver's commit in ``clone``, with its params, lock and remote."""
    git = ["git", "-c", "advice.detachedHead=false"]
    run([*git, "clone", "--quiet", "--no-checkout", spec.repo_url, str(clone)], clone.parent,
        env, 600, f"git clone {spec.repo_url}")  # fmt: skip
    try:
        run([*git, "checkout", "--quiet", spec.commit], clone, env, 600, "git checkout")
    except TaskFailed:
        raise TaskFailed(
            f"commit {spec.commit[:12]} is not in {spec.repo_url}: push it there first"
        ) from None
    (clone / "params.yaml").write_text(spec.params_yaml)
    (clone / "dvc.lock").write_text(spec.dvc_lock)
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "remote", "add", "--local", "--default", "--force", "cluster", spec.remote_url],
        clone, env, 120, "dvc remote add")  # fmt: skip
    run([*dvc, "cache", "dir", "--local", str(cache)], clone, env, 120, "dvc cache dir")


def stage_env(spec: TaskSpec) -> dict[str, str]:
    """The worker's environment with the driver's MLflow settings, the task id, and
    TensorFlow's threads sized to the task's CPUs."""
    env = dict(os.environ) | spec.env
    env |= {
        TASK_ENV: spec.task_id,
        "PIPELINE_JOBS": "1",
        "TF_NUM_INTRAOP_THREADS": str(spec.cpus),
        "TF_NUM_INTEROP_THREADS": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("DVC_STAGE", None)
    if not spec.gpus:  # a CPU task on a GPU machine leaves the GPUs to the tasks that asked
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def check_tracking_uri(env: dict[str, str]) -> None:
    """A task logs to a tracking server, never to a store on its own disk (a SQLite file,
    a folder), where its runs would be lost to everyone else."""
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise TaskFailed(
            f"MLFLOW_TRACKING_URI is {uri or 'unset (a local mlflow.db)'}: a task on another "
            "machine cannot log there; give the driver the tracking server's http(s) URI"
        )


def run_task(spec: TaskSpec) -> TaskResult:
    """Run ``spec.stage`` from a fresh clone at ``spec.commit``; push what it made."""
    check_tracking_uri(spec.env)
    started = time.monotonic()
    seconds: dict[str, float] = {}
    if spec.submitted is not None:  # Ray's start, and the wait for a free CPU (or GPU)
        seconds["waited"] = max(0.0, time.time() - spec.submitted)
    work = Path(
        os.environ.get(WORK_DIR_ENV) or Path(tempfile.gettempdir(), "mnist-optimizers-cluster")
    )
    (work / "tasks").mkdir(parents=True, exist_ok=True)
    attempt = uuid.uuid4().hex[:8]
    clone = work / "tasks" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.stage)}-{attempt}"
    env = stage_env(spec)
    try:
        prepare_clone(spec, clone, env, work / "dvc-cache")
        seconds["clone"] = time.monotonic() - started
        dvc = [sys.executable, "-m", "dvc"]
        mark = time.monotonic()
        output = run([*dvc, "repro", "--pull", spec.stage], clone, env, spec.timeout,
                     f"dvc repro {spec.stage}")  # fmt: skip
        seconds["repro"] = time.monotonic() - mark
        ran = stages_run(output)
        if set(ran) - {spec.stage}:
            raise TaskFailed(
                f"dvc repro {spec.stage} also ran {', '.join(set(ran) - {spec.stage})}: the "
                "driver's dvc.lock did not match its commit"
            )
        mark = time.monotonic()
        run([*dvc, "push", "--run-cache", spec.stage], clone, env, 1800, "dvc push")
        seconds["push"] = time.monotonic() - mark
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    seconds["total"] = time.monotonic() - started
    return TaskResult(
        spec.stage, node_name(), attempt, bool(ran), seconds, "\n".join(output.splitlines()[-5:])
    )
