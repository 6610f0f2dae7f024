"""The training and tuning stages on a Ray cluster, results back through DVC's run cache.

    RAY_ADDRESS=10.0.0.5:6379 MLFLOW_TRACKING_URI=http://10.0.0.5:5000 \\
        python -m mnist_optimizers.parallel --ray [-S key=value ...]

From a clean checkout (README: Many machines):

1. `-S` values go into params.yaml, as `dvc exp run -S` puts them; `dvc repro preprocess`
   brings the inputs up to date here and `dvc push --run-cache` sends them to the DVC remote;
2. every stale `train@` and `tune@` stage becomes one Ray task (mnist_optimizers/cluster_task.py):
   a clone at this commit with this params.yaml and dvc.lock, `dvc repro --pull <stage>`,
   `dvc push --run-cache`, MLflow runs on the tracking server;
3. `dvc repro --pull --single-item <those stages>` here: DVC restores each from the run cache
   the tasks pushed, training nothing;
4. the same for `train_tuned@` (each needs its optimizer's search);
5. `dvc repro`: evaluate, report and register here (and gd_variants, whose outputs live in
   git, not in the run cache).

Failures: Ray retries a task whose worker or node died (``--retries``) on any node; a stage
that fails by itself (bad params) fails once, and the round ends with its message after the
other tasks are done, so what they trained stays in the remote and the next run trains only
what is missing. Runs that a dead attempt left RUNNING in MLflow are ended FAILED. Ctrl-C
cancels the tasks: each stops its stage, whose run ends KILLED (the driver ends KILLED any
that is still RUNNING once the tasks had their time to stop).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from mnist_optimizers import cluster_task
from mnist_optimizers.cluster_task import TaskResult, TaskSpec, stages_run
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import write_text_atomic
from mnist_optimizers.parallel import dvc, stale_stages

log = logging.getLogger(__name__)

# What the cluster trains, round by round; gd_variants stays local: its outputs are kept in
# git (`cache: false`), and DVC keeps no run cache for such a stage.
ROUNDS = (("train@", "tune@"), ("train_tuned@",))
# Files a task takes from the driver's workspace, edited or not; any other change is refused.
SENT_WITH_TASK = ("params.yaml", "dvc.lock")
DEFAULT_RETRIES = 3
DEFAULT_TASK_TIMEOUT_SECONDS = 7200.0
# After Ctrl-C: how long the cancelled tasks get to stop their stages (SIGTERM, then SIGKILL).
CANCEL_WAIT_SECONDS = cluster_task.STOP_GRACE_SECONDS + 20.0


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None  # Ray's address; None: $RAY_ADDRESS
    cpus: int = 1
    gpus: float | None = None  # None: 1 per task where the cluster has GPUs, else 0
    retries: int = DEFAULT_RETRIES
    task_timeout: float = DEFAULT_TASK_TIMEOUT_SECONDS
    git_url: str | None = None  # None: the `origin` remote


def git(*args: str) -> str:
    """`git <args>`'s output as it printed it, or a PipelineError with its message."""
    result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise PipelineError(f"git {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout


def pipeline_outputs() -> set[str]:
    """The paths of every output in dvc.yaml, as DVC reads it (foreach and matrix expanded)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return {out.def_path for stage in repo.index.stages for out in stage.outs}


def check_code_committed(porcelain: str, outputs: set[str]) -> None:
    """Refuse uncommitted changes to anything but params.yaml and dvc.lock (which travel
    with each task) and the pipeline's own outputs (the reports kept in git, the .gitignore
    files DVC writes): the tasks run the committed code, and results must come from it."""

    def allowed(path: str) -> bool:
        return (
            path in SENT_WITH_TASK
            or Path(path).name == ".gitignore"
            or any(path == out or path.startswith(f"{out}/") for out in outputs)
        )

    changed = [line[3:] for line in porcelain.splitlines() if not allowed(line[3:])]
    if changed:
        raise PipelineError(
            "uncommitted changes: " + ", ".join(changed[:10]) + (" ..." if len(changed) > 10
            else "") + ". The cluster runs the committed code: commit them (and push the "
            "commit where the nodes clone from), or stash them"
        )  # fmt: skip


def check_shared_tracking_uri(uri: str | None) -> str:
    """The tracking server every node logs to: an http(s) URI. A SQLite or file store is
    local to one machine, and runs logged there by the other nodes would be lost."""
    scheme = urllib.parse.urlsplit(uri or "").scheme
    if scheme not in ("http", "https"):
        raise PipelineError(
            f"MLFLOW_TRACKING_URI is {uri or 'unset (the local mlflow.db)'}: the cluster's "
            "tasks run on other machines and cannot share a local store. Start a tracking "
            "server (README: Team mode) and set MLFLOW_TRACKING_URI=http://host:port"
        )
    return uri  # type: ignore[return-value]


def default_remote_url() -> str:
    """The URL of the default DVC remote, through which every node (and `dvc repro --pull`
    here) exchanges data and results, as a path every node can read it by."""
    name = dvc("remote", "default").strip()
    if not name:
        raise PipelineError(
            "no default DVC remote: the nodes exchange data and results through one. "
            "dvc remote add --default shared <url> (README: Shared DVC storage)"
        )
    return dvc("config", f"remote.{name}.url").strip()  # a local path comes back absolute


def tracking_env() -> dict[str, str]:
    """The driver's MLflow settings, for the tasks' stages (credentials included: they
    reach the tasks through Ray, never a log line)."""
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}


def task_spec(stage: str, config: ClusterConfig, shared: dict, gpus: float) -> TaskSpec:
    """``stage``'s task; ``shared``: what every task of the round gets (repo, commit, remote,
    MLflow settings, this params.yaml and dvc.lock)."""
    return TaskSpec(
        stage=stage, task_id=uuid.uuid4().hex, cpus=config.cpus, gpus=gpus,
        timeout=config.task_timeout, submitted=time.time(), **shared,
    )  # fmt: skip


def mlflow_client():
    import mlflow

    from mnist_optimizers import tracking

    return mlflow.MlflowClient(tracking.tracking_uri())


def runs_left_running(task_ids: Sequence[str], client=None) -> list:
    """The MLflow runs of ``task_ids`` still RUNNING, in every experiment."""
    from mnist_optimizers import tracking

    client = client or mlflow_client()
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    return [
        run
        for task_id in task_ids
        for run in client.search_runs(
            experiments,
            f"tags.`{tracking.CLUSTER_TASK_TAG}` = '{task_id}' and attributes.status = 'RUNNING'",
        )
    ]


def end_dead_attempts(task_ids: Sequence[str], cancelled: bool = False) -> list[str]:
    """End the MLflow runs of ``task_ids`` still RUNNING; return their ids. FAILED: their
    attempt's worker or node died (a finished task's own run is FINISHED by then). KILLED,
    when ``cancelled``: the driver cancelled the task (Ctrl-C), and its stage did not end its
    run in time (a loaded node), or could not (it was stopped by force)."""
    from mlflow.entities import RunStatus

    status, reason = (
        (RunStatus.KILLED, "its task was cancelled from the driver")
        if cancelled
        else (RunStatus.FAILED, "its cluster node or worker died")
    )
    client = mlflow_client()
    ended = []
    for run in runs_left_running(task_ids, client):
        client.set_tag(run.info.run_id, "pipeline.end_reason", reason)
        client.set_terminated(run.info.run_id, RunStatus.to_string(status))
        log.warning(
            "MLflow run %s (%s) was left RUNNING: %s; marked %s",
            run.info.run_id, run.info.run_name, reason, RunStatus.to_string(status),
        )  # fmt: skip
        ended.append(run.info.run_id)
    return ended


def describe(result: TaskResult) -> str:
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if k != "total")
    what = "ran" if result.ran else "restored from the run cache"
    return f"{result.stage} on {result.node}: {what} in {result.seconds['total']:.1f} s ({parts})"


class Cluster:
    """The tasks of one command on a Ray cluster."""

    def __init__(self, config: ClusterConfig) -> None:
        import ray

        self.ray = ray
        self.config = config
        address = config.address or os.environ.get("RAY_ADDRESS")
        if not address:  # ray.init would start a cluster of one, here, without a word
            raise PipelineError(
                "--ray: no cluster address: pass --address host:port or set RAY_ADDRESS to "
                "the head's (README: Many machines)"
            )
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PipelineError(f"Ray cluster {address}: {exc}") from None
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n["Alive"]]
        self.gpus = (
            config.gpus if config.gpus is not None else (1.0 if resources.get("GPU") else 0.0)
        )
        log.info(
            "Ray cluster %s: %d nodes, %g CPUs, %g GPUs; each task asks for %d CPUs, %g GPUs",
            address, len(nodes),
            resources.get("CPU", 0), resources.get("GPU", 0), config.cpus, self.gpus,
        )  # fmt: skip
        # The task's code travels by value: the workers need no copy of this package.
        ray.cloudpickle.register_pickle_by_value(cluster_task)
        self.remote_task = ray.remote(cluster_task.run_task).options(
            num_cpus=config.cpus, num_gpus=self.gpus, max_retries=config.retries,
            retry_exceptions=False,
        )  # fmt: skip

    def run_round(self, specs: Sequence[TaskSpec]) -> list[TaskResult]:
        """Run ``specs`` on the cluster; log each as it finishes; raise a PipelineError
        naming the stages that failed once every task is done."""
        ray = self.ray
        pending = {self.remote_task.remote(spec): spec for spec in specs}
        results: list[TaskResult] = []
        failed: dict[str, str] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:
                    failed[spec.stage] = str(exc.cause if exc.cause else exc)
                    log.error("%s failed: %s", spec.stage, failed[spec.stage].splitlines()[0])
                except ray.exceptions.RayError as exc:  # retries used up: nodes or workers died
                    failed[spec.stage] = f"{type(exc).__name__}: {exc}"
                    log.error("%s failed: %s", spec.stage, failed[spec.stage].splitlines()[0])
                else:
                    results.append(result)
                    log.info("[%d/%d] %s", len(results) + len(failed), len(specs), describe(result))
                end_dead_attempts([spec.task_id])
        except BaseException:  # Ctrl-C, or the driver itself failing: stop what still runs
            self.cancel(pending)
            end_dead_attempts([spec.task_id for spec in specs], cancelled=True)
            raise
        if failed:
            kept = (
                " (the others' results are in the DVC remote: once it is fixed, the command "
                "again trains only what is missing)" if len(failed) < len(specs) else ""
            )  # fmt: skip
            raise PipelineError(
                f"{len(failed)} of {len(specs)} stages failed on the cluster{kept}:\n"
                + "\n".join(f"--- {stage}\n{why}" for stage, why in failed.items())
            )
        return results

    def cancel(self, pending: dict) -> None:
        """Cancel ``pending`` tasks: each stops its stage (SIGTERM: its run ends KILLED); wait
        for them, then force what is left."""
        if not pending:
            return
        log.warning(
            "cancelling %d tasks: %s", len(pending), ", ".join(s.stage for s in pending.values())
        )
        for ref in pending:
            self.ray.cancel(ref)
        # Ray counts a task cancelled at once; its stage needs a moment to end its run KILLED.
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        task_ids = [spec.task_id for spec in pending.values()]
        while time.monotonic() < deadline and runs_left_running(task_ids):
            time.sleep(1.0)
        left = max(0.0, deadline - time.monotonic())
        _, running = self.ray.wait(list(pending), num_returns=len(pending), timeout=left)
        for ref in running:
            self.ray.cancel(ref, force=True)


def forget_lock_entries(lock_text: str, stages: Sequence[str]) -> str:
    """dvc.lock without the entries of ``stages``.

    A stage whose entry still matches its inputs but whose outputs are missing here (a clean
    checkout that never pulled them) would otherwise be judged by that entry: DVC would pull
    the outputs it names, which are nowhere if no one pushed them, and train the stage again
    here. Without the entry, the task and then this machine find the stage in the run cache
    by its inputs: the result the task pushed."""
    lock = yaml.safe_load(lock_text) or {}
    for stage in stages:
        lock.get("stages", {}).pop(stage, None)
    return yaml.safe_dump(lock, sort_keys=False)


def restore(stages: Sequence[str]) -> None:
    """Take ``stages`` from the run cache in the remote into this workspace; a stage DVC
    would have to run here is an error (the cluster should have run it)."""
    output = dvc("repro", "--pull", "--single-item", *stages)
    if ran := stages_run(output):
        raise PipelineError(f"dvc repro ran {', '.join(ran)} here: not restored from the run cache")


def run_cluster(config: ClusterConfig, set_params: Sequence[str] = ()) -> list[TaskResult]:
    """Train every stale training and tuning stage on the cluster, then `dvc repro` here;
    return what each task did."""
    if config.cpus < 1:
        raise PipelineError(f"--cpus-per-task: expected a positive integer, got {config.cpus}")
    if config.retries < 0:
        raise PipelineError(f"--retries: expected 0 or more, got {config.retries}")
    check_code_committed(git("status", "--porcelain", "--untracked-files=no"), pipeline_outputs())
    check_shared_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    if set_params:
        from dvc.utils.hydra import apply_overrides

        apply_overrides(Path("params.yaml"), list(set_params))
    shared = {
        "repo_url": config.git_url or git("remote", "get-url", "origin").strip(),
        "commit": git("rev-parse", "HEAD").strip(),
        "remote_url": default_remote_url(),
        "env": tracking_env(),
    }
    started = time.monotonic()
    log.info("inputs, here: dvc repro preprocess; dvc push --run-cache")
    dvc("repro", "preprocess")
    dvc("push", "--run-cache", "download", "preprocess")
    cluster = Cluster(config)
    results: list[TaskResult] = []
    for prefixes in ROUNDS:
        stages = stale_stages(dvc("status", "--json"), prefixes)
        if not stages:
            continue
        log.info("on the cluster: %s", ", ".join(stages))
        lock = Path("dvc.lock")
        write_text_atomic(lock, forget_lock_entries(lock.read_text(), stages), output=False)
        inputs = shared | {"params_yaml": Path("params.yaml").read_text(),
                           "dvc_lock": lock.read_text()}  # fmt: skip
        specs = [task_spec(stage, config, inputs, cluster.gpus) for stage in stages]
        mark = time.monotonic()
        results += cluster.run_round(specs)
        on_cluster = time.monotonic() - mark
        restore(stages)
        log.info(
            "round of %d stages: %.1f s on the cluster, %.1f s restoring them here",
            len(stages), on_cluster, time.monotonic() - mark - on_cluster,
        )  # fmt: skip
    log.info("dvc repro: the rest, here")
    output = dvc("repro")
    print(output, end="")
    summary(results, time.monotonic() - started)
    return results


def summary(results: Sequence[TaskResult], seconds: float) -> None:
    ran = [r for r in results if r.ran]
    nodes = sorted({r.node for r in results})
    log.info(
        "cluster: %d stages (%d ran, %d restored from the run cache) on %d nodes in %.0f s",
        len(results), len(ran), len(results) - len(ran), len(nodes), seconds,
    )  # fmt: skip
    for node in nodes:
        mine = [r for r in results if r.node == node]
        busy = sum(r.seconds["total"] for r in mine)
        log.info("  %s: %d stages, %.0f s busy", node, len(mine), busy)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a Ray cluster (--ray; README: Many machines)")
    group.add_argument("--ray", action="store_true", help="run the stages on a Ray cluster")
    group.add_argument("--address", help="the cluster's head, host:port (default $RAY_ADDRESS)")
    group.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per stage (1)")
    group.add_argument(
        "--gpus-per-task", type=float, default=None,
        help="GPUs per stage (default: 1 where the cluster has GPUs, else 0)",
    )  # fmt: skip
    group.add_argument(
        "--retries", type=int, default=DEFAULT_RETRIES,
        help=f"times a task whose node or worker died is retried ({DEFAULT_RETRIES})",
    )  # fmt: skip
    group.add_argument("--git-url", help="where the nodes clone the repo (default: origin)")
    group.add_argument(
        "-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
        help="set a param, as `dvc exp run -S` does (repeatable)",
    )  # fmt: skip


def from_arguments(args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        address=args.address, cpus=args.cpus_per_task, gpus=args.gpus_per_task,
        retries=args.retries, task_timeout=args.task_timeout, git_url=args.git_url,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit("run it as: python -m mnist_optimizers.parallel --ray")
