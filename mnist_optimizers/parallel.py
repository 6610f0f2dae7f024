"""The training and tuning stages in parallel on a Ray cluster: one machine or many.

    ray start --head --num-cpus 2 --disable-usage-stats        # one machine: a cluster of one
    python -m mnist_optimizers.parallel --address 127.0.0.1:6379 [-S key=value ...]

    RAY_ADDRESS=10.0.0.5:6379 MLFLOW_TRACKING_URI=http://10.0.0.5:5000 \\
        python -m mnist_optimizers.parallel                    # many (docs/parallel.md)

From a clean checkout:

1. `-S` values go into params.yaml, as `dvc exp run -S` puts them; `dvc repro preprocess`
   brings the inputs up to date here (and, with a DVC remote, `dvc push --run-cache` sends
   them there);
2. every stale `train@` and `tune@` stage becomes one Ray task (mnist_optimizers/parallel_task.py):
   a clone at this commit with this params.yaml and dvc.lock, `dvc repro <stage>`;
3. `dvc repro --single-item <those stages>` here: DVC restores each from the run cache the
   tasks filled, training nothing;
4. the same for `train_tuned@` (each needs its optimizer's search);
5. `dvc repro`: evaluate, report and register here (and gd_variants, whose outputs live in
   git, not in the run cache).

Where the stages meet: with no default DVC remote, every node must be this machine, and the
tasks use this project's DVC cache and MLflow store (as `dvc repro` does). With a default
remote, the tasks pull and push through it, and log to the tracking server.

Failures: Ray retries a task whose worker or node died (``--retries``) on any node; a stage
that fails by itself (bad params) fails once, and the round ends with its message after the
other tasks are done, so what they trained stays in the run cache and the next run trains
only what is missing. Runs that a dead attempt left RUNNING in MLflow are ended FAILED. Ctrl-C
cancels the tasks: each stops its stage, whose run ends KILLED (the driver ends KILLED any
that is still RUNNING once the tasks had their time to stop).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from mnist_optimizers import mlflow_runs, mlflow_store, parallel_task, proc
from mnist_optimizers.cli import hold_signals_in_the_store, run_stage
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.files import write_text_atomic
from mnist_optimizers.params import load_params
from mnist_optimizers.parallel_task import TaskResult, TaskSpec, stages_run

log = logging.getLogger(__name__)

# What the cluster trains, round by round; gd_variants stays local: its outputs are kept in
# git (`cache: false`), and DVC keeps no run cache for such a stage.
ROUNDS = (("train@", "tune@"), ("train_tuned@",))
# Files a task takes from the driver's workspace, edited or not; any other change is refused.
SENT_WITH_TASK = ("params.yaml", "dvc.lock")
DEFAULT_RETRIES = 3
DEFAULT_TASK_TIMEOUT_SECONDS = 7200.0
# How long `ray.init` may take to reach the head before the command gives up.
CONNECT_TIMEOUT_SECONDS = 30
# After Ctrl-C: how long the cancelled tasks get to stop their stages (SIGTERM, then SIGKILL).
CANCEL_WAIT_SECONDS = proc.STOP_GRACE_SECONDS + 20.0


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None  # Ray's address; None: $RAY_ADDRESS
    cpus: int = 1
    gpus: float | None = None  # None: 1 per task where the cluster has GPUs, else 0
    retries: int = DEFAULT_RETRIES
    task_timeout: float = DEFAULT_TASK_TIMEOUT_SECONDS
    git_url: str | None = None  # None: `origin` with a remote, this repo without one


def command(argv: Sequence[str], timeout: float = 7200.0) -> str:
    """``argv``'s output, or a PipelineError with it."""
    try:
        return proc.run_command(argv, timeout=timeout)
    except proc.CommandFailed as exc:
        raise PipelineError(str(exc)) from None


def git(*args: str) -> str:
    return command(["git", *args], timeout=120)


def dvc(*args: str) -> str:
    """A dvc command of this Python's DVC, here."""
    return command([sys.executable, "-m", "dvc", *args])


def stale_stages(status_json: str, prefixes: Sequence[str]) -> list[str]:
    """The stages named by ``prefixes`` that `dvc status --json` lists as changed, in
    pipeline order."""
    return [name for name in json.loads(status_json or "{}") if name.startswith(tuple(prefixes))]


def pipeline() -> tuple[list[str], set[str]]:
    """The names of every stage in dvc.yaml and the paths of every output, as DVC reads
    them (foreach and matrix expanded)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        stages = repo.index.stages
        return [s.addressing for s in stages], {out.def_path for s in stages for out in s.outs}


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
            else "") + ". The tasks run the committed code: commit them (and push the "
            "commit where the nodes clone from), or stash them"
        )  # fmt: skip


def check_shared_tracking_uri(uri: str) -> None:
    """With a DVC remote the tasks may run on other machines: they log to a tracking server.
    A SQLite or file store is local to one machine, and their runs would be lost there."""
    if not uri.startswith(("http://", "https://")):
        given = os.environ.get("MLFLOW_TRACKING_URI") or "unset (the local mlflow.db)"
        raise PipelineError(
            f"MLFLOW_TRACKING_URI is {given}: with a DVC remote the tasks may run on other machines, and "
            "cannot share a local store. Start a tracking server (docs/team.md) and set "
            "MLFLOW_TRACKING_URI=http://host:port, or, on one machine, remove the default remote"
        )  # fmt: skip


def default_remote_url() -> str | None:
    """The URL of the default DVC remote (a local path comes back absolute), or None."""
    try:  # exit status 1 and "No default remote set" when there is none
        name = proc.run_command([sys.executable, "-m", "dvc", "remote", "default"], timeout=120)
    except proc.CommandFailed:
        return None
    return dvc("config", f"remote.{name.strip()}.url").strip()


def shared_inputs(config: ClusterConfig, remote: str | None) -> dict:
    """What every task gets: the repo and commit, where results meet (the remote, or this
    machine's cache), the MLflow settings (credentials included: they reach the tasks
    through Ray, never a log line)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = mlflow_store.tracking_uri()  # absolute: the tasks run elsewhere
    repo_url = config.git_url or (
        git("remote", "get-url", "origin").strip() if remote else str(Path.cwd())
    )
    return {
        "repo_url": repo_url,
        "commit": git("rev-parse", "HEAD").strip(),
        "remote_url": remote,
        "cache_dir": None if remote else dvc("cache", "dir").strip(),
        "host": socket.gethostname(),
        "env": env,
    }


def end_dead_attempts(task_ids: Sequence[str], cancelled: bool = False) -> list[str]:
    """End the MLflow runs of ``task_ids`` still RUNNING; return their ids. FAILED: their
    attempt's worker or node died (a finished task's own run is FINISHED by then). KILLED,
    when ``cancelled``: the driver cancelled the task (Ctrl-C), and its stage did not end its
    run in time (a loaded node), or could not (it was stopped by force)."""
    status, reason = (
        ("KILLED", "its task was cancelled from the driver")
        if cancelled
        else ("FAILED", "its cluster node or worker died")
    )
    client = mlflow_store.client()
    experiments = every_experiment(client)
    return [
        run_id
        for task_id in task_ids
        for run_id in mlflow_runs.end_left_running(
            client, experiments, task_query(task_id), status, reason
        )
    ]


def every_experiment(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=1000)]


def task_query(task_id: str) -> str:
    """The MLflow filter of the runs a task's attempts started."""
    return f"tags.`{mlflow_runs.PARALLEL_TASK_TAG}` = '{task_id}'"


def runs_left_running(task_ids: Sequence[str]) -> bool:
    """Whether any MLflow run of ``task_ids`` is still RUNNING."""
    client = mlflow_store.client()
    experiments = every_experiment(client)
    return any(
        client.search_runs(experiments, f"{task_query(t)} and attributes.status = 'RUNNING'",
                           max_results=1)  # fmt: skip
        for t in task_ids
    )


def describe(result: TaskResult) -> str:
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if k != "total")
    what = "ran" if result.ran else "restored from the run cache"
    return f"{result.stage} on {result.node}: {what} in {result.seconds['total']:.1f} s ({parts})"


class Cluster:
    """The tasks of one command on a Ray cluster."""

    def __init__(self, config: ClusterConfig) -> None:
        import ray

        self.ray = ray
        address = config.address or os.environ.get("RAY_ADDRESS")
        if not address:  # ray.init would start a cluster of one, here, without a word
            raise PipelineError(
                "no cluster address: pass --address host:port or set RAY_ADDRESS to the "
                "head's (one machine: `ray start --head` prints it; docs/parallel.md)"
            )
        self.address = address
        self.connect(address)
        resources = ray.cluster_resources()
        self.nodes = [n for n in ray.nodes() if n["Alive"]]
        self.gpus = (
            config.gpus if config.gpus is not None else (1.0 if resources.get("GPU") else 0.0)
        )
        log.info(
            "Ray cluster %s: %d nodes, %g CPUs, %g GPUs; each task asks for %d CPUs, %g GPUs",
            address, len(self.nodes),
            resources.get("CPU", 0), resources.get("GPU", 0), config.cpus, self.gpus,
        )  # fmt: skip
        # The task's code travels by value: the workers need no copy of this package.
        ray.cloudpickle.register_pickle_by_value(parallel_task)
        ray.cloudpickle.register_pickle_by_value(proc)
        self.remote_task = ray.remote(parallel_task.run_task).options(
            num_cpus=config.cpus, num_gpus=self.gpus, max_retries=config.retries,
            retry_exceptions=False,
        )  # fmt: skip

    def connect(self, address: str) -> None:
        """Join the cluster at ``address``, or a PipelineError within CONNECT_TIMEOUT_SECONDS
        (Ray itself retries for minutes with a warning a try)."""
        host, _, port = address.rpartition(":")
        try:
            if address != "auto" and "://" not in address:  # Ray's own forms: it checks those
                socket.create_connection((host, int(port)), CONNECT_TIMEOUT_SECONDS).close()
        except (OSError, ValueError) as exc:
            raise PipelineError(
                f"Ray cluster {address}: nothing answers there ({exc}); start the head "
                "(ray start --head) or fix --address / RAY_ADDRESS"
            ) from None
        try:
            self.ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PipelineError(f"Ray cluster {address}: {exc}") from None
        # ray.init replaces the SIGTERM handler with sys.exit(15): the runner would exit 15
        # without its message; SIGTERM stops it as Ctrl-C does (cancel, exit 143).
        hold_signals_in_the_store()

    def check_one_machine(self) -> None:
        """Without a DVC remote the tasks share this machine's cache and store: every node
        must be this machine."""
        here = socket.gethostname()
        elsewhere = sorted({n["NodeManagerHostname"] for n in self.nodes} - {here})
        if elsewhere:
            raise PipelineError(
                f"no default DVC remote, and the cluster has nodes on other machines "
                f"({', '.join(elsewhere)}): they exchange data and results through one. "
                "dvc remote add --default shared <url> (docs/team.md)"
            )

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
                " (the others' results are in the run cache: once it is fixed, the command "
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
    by its inputs: the result the task made."""
    lock = yaml.safe_load(lock_text) or {}
    for stage in stages:
        lock.get("stages", {}).pop(stage, None)
    return yaml.safe_dump(lock, sort_keys=False)


def restore(stages: Sequence[str], pull: bool) -> None:
    """Take ``stages`` from the run cache (in the remote, with ``pull``) into this workspace;
    a stage DVC would have to run here is an error (the cluster should have run it)."""
    output = dvc("repro", *(["--pull"] if pull else []), "--single-item", *stages)
    if ran := stages_run(output):
        raise PipelineError(f"dvc repro ran {', '.join(ran)} here: not restored from the run cache")


def check_setup(config: ClusterConfig) -> str | None:
    """Check the arguments, the code and the store, before anything runs; return the default
    remote's URL (None: one machine)."""
    if config.cpus < 1:
        raise PipelineError(f"--cpus-per-task: expected a positive integer, got {config.cpus}")
    if config.retries < 0:
        raise PipelineError(f"--retries: expected 0 or more, got {config.retries}")
    if not config.task_timeout > 0:
        raise PipelineError(f"--task-timeout: expected seconds > 0, got {config.task_timeout}")
    check_code_committed(git("status", "--porcelain", "--untracked-files=no"), pipeline()[1])
    remote = default_remote_url()
    if remote:
        check_shared_tracking_uri(mlflow_store.tracking_uri())
    return remote


def prepare(remote: str | None, set_params: Sequence[str]) -> None:
    """Apply ``set_params``, bring the inputs up to date here (and, with a ``remote``, there)
    and make the experiment."""
    if set_params:
        from dvc.utils.hydra import apply_overrides

        apply_overrides(Path("params.yaml"), list(set_params))
    log.info("inputs, here: dvc repro preprocess" + ("; dvc push --run-cache" if remote else ""))
    dvc("repro", "preprocess")  # check_params first: a bad param stops it all here
    if remote:  # what the tasks need from here: the data, and the stages already done here
        prefixes = tuple(p for round_ in ROUNDS for p in round_)
        stale = stale_stages(dvc("status", "--json"), prefixes)
        # The stages as the -S values make them (another seed, another optimizer).
        done = [s for s in pipeline()[0] if s.startswith(prefixes) and s not in stale]
        dvc("push", "--run-cache", "download", "preprocess", *done)
    # The experiment, with its artifact folder here, before any task could make it elsewhere.
    mlflow_store.setup_experiment(mlflow_store.validate_mlflow(load_params()["mlflow"]))


def run_parallel(config: ClusterConfig, set_params: Sequence[str] = ()) -> list[TaskResult]:
    """Train every stale training and tuning stage on the cluster, then `dvc repro` here;
    return what each task did."""
    started = time.monotonic()
    remote = check_setup(config)
    cluster = Cluster(config)  # a wrong address fails here, before any work
    if remote is None:
        cluster.check_one_machine()
    prepare(remote, set_params)
    inputs = shared_inputs(config, remote)
    results: list[TaskResult] = []
    for prefixes in ROUNDS:
        stages = stale_stages(dvc("status", "--json"), prefixes)
        if not stages:
            continue
        log.info("on the cluster: %s", ", ".join(stages))
        lock = Path("dvc.lock")
        write_text_atomic(lock, forget_lock_entries(lock.read_text(), stages), output=False)
        spec = TaskSpec(stage="", task_id="", params_yaml=Path("params.yaml").read_text(),
                        dvc_lock=lock.read_text(), cpus=config.cpus, gpus=cluster.gpus,
                        timeout=config.task_timeout, **inputs)  # fmt: skip
        specs = [replace(spec, stage=stage, task_id=uuid.uuid4().hex, submitted=time.time())
                 for stage in stages]  # fmt: skip
        mark = time.monotonic()
        results += cluster.run_round(specs)
        on_cluster = time.monotonic() - mark
        restore(stages, pull=remote is not None)
        log.info(
            "round of %d stages: %.1f s on the cluster, %.1f s restoring them here",
            len(stages), on_cluster, time.monotonic() - mark - on_cluster,
        )  # fmt: skip
    log.info("dvc repro: the rest, here")
    print(dvc("repro"), end="")
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


def parse_arguments(argv: list[str]) -> tuple[ClusterConfig, list[str]]:
    """The command line as a ClusterConfig and the `-S` values."""
    parser = argparse.ArgumentParser(prog="python -m mnist_optimizers.parallel",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--address", help="the cluster's head, host:port (default $RAY_ADDRESS)")
    parser.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per stage (1)")
    parser.add_argument(
        "--gpus-per-task", type=float, default=None,
        help="GPUs per stage (default: 1 where the cluster has GPUs, else 0)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=DEFAULT_RETRIES,
        help=f"times a task whose node or worker died is retried ({DEFAULT_RETRIES})",
    )  # fmt: skip
    parser.add_argument(
        "--task-timeout", type=float, default=DEFAULT_TASK_TIMEOUT_SECONDS, metavar="SECONDS",
        help="fail a stage still running after this long (7200)",
    )  # fmt: skip
    parser.add_argument("--git-url", help="where the nodes clone the repo (default: origin)")
    parser.add_argument(
        "-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
        help="set a param, as `dvc exp run -S` does (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    config = ClusterConfig(
        address=args.address, cpus=args.cpus_per_task, gpus=args.gpus_per_task,
        retries=args.retries, task_timeout=args.task_timeout, git_url=args.git_url,
    )  # fmt: skip
    return config, args.set_param


def main(argv: list[str]) -> None:
    run_parallel(*parse_arguments(argv))


if __name__ == "__main__":
    run_stage(main)
