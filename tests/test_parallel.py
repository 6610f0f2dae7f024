"""The parallel runner (`python -m mnist_optimizers.parallel`) on a real two-node Ray cluster
on this machine: a head and a second node, each its own `ray start` with 1 CPU, a small
object store and ports of its own, token authentication on (tests/ray_local.py). On one
machine it needs what `dvc repro` needs and no more: the project's DVC cache and its SQLite
store. A tiny comparison goes through it and is checked against a sequential `dvc repro`;
then a stage fails by itself and the runner is interrupted; last, as on many machines, it
runs through a DVC remote and a tracking server on PostgreSQL while the second node is killed
in the middle of a task."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from mnist_optimizers import mlflow_runs, mlflow_store, parallel, parallel_task
from mnist_optimizers.errors import PipelineError
from mnist_optimizers.parallel_task import stages_run
from mnist_optimizers.proc import CommandFailed

from . import processes, servers
from .cli import dvc, project_repo, run
from .conftest import tiny_params
from .ray_local import NODE_TAG, TRAINING, comparable, ray_cluster, training_lock

pytestmark = pytest.mark.e2e

RUNNER_TIMEOUT_SECONDS = 900
TRAINING_GROUPS = ("train", "tune", "train_tuned")  # dvc.yaml's matrix stages that train


def forget_outputs(root: Path, env: dict[str, str], stages: list[str], keep: Path) -> None:
    """``stages`` as a clean clone of a repo has them when no one pushed their outputs: in
    dvc.lock, up to date with their inputs, and their outputs nowhere (not here, not in DVC's
    cache or run cache, not in the remote). They run here first, one after the other as
    `dvc repro` runs them, with 1 thread as each task has: their outputs and dvc.lock are
    kept in ``keep``, to compare the cluster's with."""
    one_thread = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    dvc(root, env | one_thread, "repro", *stages)
    keep.mkdir()
    shutil.copy2(root / "dvc.lock", keep / "dvc.lock")
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    for stage in stages:
        for out in lock[stage]["outs"]:
            path, md5 = root / out["path"], out["md5"]
            (keep / out["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, keep / out["path"])
            cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
            cached.unlink(missing_ok=True)  # two outputs may have one content
    shutil.rmtree(root / ".dvc" / "cache" / "runs")


# The stages the fixture runs one after the other before the runner: sgd's whole chain.
SEQUENTIAL = ["train@mnist_cnn-sgd-42", "tune@mnist_cnn-sgd", "train_tuned@mnist_cnn-sgd-42"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_mirror):
    """The cluster and the project in a git repo with its data prepared and committed (as a
    clone of this repo has it), sgd's stages in dvc.lock with their outputs nowhere (a clone
    that never pulled them; what `dvc repro` made of them is in folder/sequential), no DVC
    remote and the project's own SQLite store."""
    folder = tmp_path_factory.mktemp("parallel")
    mirror, sha256 = tiny_mirror
    params = tiny_params(sha256)
    params["compare"] = ["sgd", "adam"]
    root = folder / "project"
    env = project_repo(root, mirror, params)
    dvc(root, env, "repro", "preprocess")
    forget_outputs(root, env, SEQUENTIAL, folder / "sequential")
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "data"], root, env)
    with ray_cluster(env) as (address, cluster_env):
        yield root, address, cluster_env


def store(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def run_runner(root: Path, env: dict[str, str], address: str, *args: str) -> str:
    """The runner, as a user types it; its output. It must end by itself within the deadline."""
    argv = [sys.executable, "-m", "mnist_optimizers.parallel", "--address", address, *args]
    result = subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=RUNNER_TIMEOUT_SECONDS
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the runner exited {result.returncode}:\n{output[-8000:]}"
    return output


def finished_tasks(output: str) -> dict[str, str]:
    """stage -> the Ray node (its id) each task's progress line names."""
    done = {}
    for line in output.splitlines():
        if "] " in line and " on " in line and ", node " in line:
            stage = line.split("] ", 1)[1].split(" on ")[0]
            done[stage] = line.split(", node ")[1].split(")")[0]
    return done


def runs_by_stage(url: str) -> dict[str, list]:
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("mnist-optimizers")
    by_stage: dict[str, list] = {}
    for r in client.search_runs([experiment.experiment_id], max_results=1000):
        if "mlflow.parentRunId" not in r.data.tags:  # a search's trials are its children
            by_stage.setdefault(r.data.tags["dvc.stage"], []).append(r)
    return by_stage


def test_on_one_machine_it_trains_on_both_nodes_and_equals_a_sequential_dvc_repro(setup) -> None:
    """No DVC remote, no tracking server: the tasks share the project's cache and store."""
    root, address, env = setup
    url = store(root)
    output = run_runner(root, env, address)

    tasks = finished_tasks(output)
    expected = {"train@mnist_cnn-sgd-42", "train@mnist_cnn-adam-42", "tune@mnist_cnn-sgd", "tune@mnist_cnn-adam",
                "train_tuned@mnist_cnn-sgd-42", "train_tuned@mnist_cnn-adam-42"}  # fmt: skip
    assert set(tasks) == expected, output[-6000:]
    assert len(set(tasks.values())) == 2, f"tasks ran on one node only: {tasks}"
    # The runner's own `dvc repro` restored every stage from the run cache: it ran none of them.
    assert not [s for s in stages_run(output) if s.startswith(TRAINING)], output[-6000:]
    assert {"evaluate@mnist_cnn", "report", "register@mnist_cnn"} <= set(stages_run(output))
    assert "Data and pipelines are up to date" in dvc(root, env, "status")

    by_stage = runs_by_stage(url)
    tasks_runs = {
        stage: [r for r in runs if mlflow_runs.PARALLEL_TASK_TAG in r.data.tags]
        for stage, runs in by_stage.items()
    }  # the fixture's own `dvc repro` of sgd's stages logged to the same store, untagged
    for stage in ("train@mnist_cnn-sgd-42", "train@mnist_cnn-adam-42", "tune@mnist_cnn-sgd", "tune@mnist_cnn-adam"):
        assert [r.info.status for r in tasks_runs[stage]] == ["FINISHED"], stage
        (r,) = tasks_runs[stage]
        assert r.data.tags[mlflow_runs.DEVICE_TAG].startswith("CPU (")
    for name in ("sgd", "adam"):  # the tuned run is its own, or the default run reused
        assert [r.info.status for r in tasks_runs.get(f"train_tuned@{name}-42", [])] in (
            [], ["FINISHED"]
        )  # fmt: skip
    assert tasks_runs["train@mnist_cnn-adam-42"][0].data.params["runtime.intra_op_threads"] == "1"

    # The cluster's sgd chain is what `dvc repro` made of it, one stage after the other
    # (the fixture): the same dvc.lock entries, the same outputs.
    sequential = root.parent / "sequential"
    assert {k: v for k, v in training_lock(sequential).items() if k in SEQUENTIAL} == {
        k: v for k, v in training_lock(root).items() if k in SEQUENTIAL
    }  # fmt: skip
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    outputs = [out["path"] for stage in SEQUENTIAL for out in lock[stage]["outs"]]
    assert "models/mnist_cnn/sgd-42.keras" in outputs and any(p.startswith("metrics/tune") for p in outputs)
    for path in outputs:
        assert comparable(sequential / path) == comparable(root / path), path


def stage_processes(tag_value: str) -> list[int]:
    """The pids of the training stages (and the shells DVC runs them in) running on the node
    tagged ``tag_value``."""
    return [
        pid
        for pid, cmdline in processes.tagged(tag_value, NODE_TAG).items()
        if "stages.train" in cmdline
    ]


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def kill_second_node_mid_training(url: str, found: dict, stop: threading.Event) -> None:
    """Once a training on the second node has its MLflow run RUNNING, SIGKILL every process
    of that node (the machine dies); note the run. The trainings there are paused (SIGSTOP)
    while the store is asked: a short training on a loaded machine could otherwise start and
    end its run between two looks."""
    client = mlflow.MlflowClient(url)
    while not stop.is_set():
        pids = stage_processes("second")
        signal_all(pids, signal.SIGSTOP)
        try:
            with contextlib.suppress(Exception):  # the experiment may not exist yet
                experiment = client.get_experiment_by_name("mnist-optimizers")
                runs = [
                    r
                    for r in client.search_runs(
                        [experiment.experiment_id], "attributes.status = 'RUNNING'"
                    )
                    if r.data.tags.get(mlflow_runs.PID_TAG) in {str(pid) for pid in pids}
                ]
                if runs:
                    found["run"] = runs[0].info.run_id
                    found["killed"] = processes.stop_tagged("second", 0, NODE_TAG)
                    return
        finally:
            signal_all(pids, signal.SIGCONT)
        time.sleep(0.2)


def test_a_stage_that_fails_by_itself_fails_once_with_its_message(setup, tmp_path) -> None:
    """A failure of the task's own (here: the nodes clone from a repo without the driver's
    commit) is not retried: each stage fails once, and the run ends naming them all."""
    root, address, env = setup
    elsewhere = tmp_path / "other-repo"
    run(["git", "init", "-q", str(elsewhere)], tmp_path, env)
    run(["git", "-C", str(elsewhere), "commit", "-q", "--allow-empty", "-m", "x"], tmp_path, env)
    argv = [sys.executable, "-m", "mnist_optimizers.parallel", "--address", address,
            "--git-url", str(elsewhere), "-S", "train.seeds=[9]"]  # fmt: skip
    result = subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=RUNNER_TIMEOUT_SECONDS
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-6000:]
    commit = run(["git", "rev-parse", "HEAD"], root, env).strip()
    message = f"commit {commit[:12]} is not in {elsewhere}: push it there first"
    submitted = output.split("on the cluster: ")[1].splitlines()[0].split(", ")
    assert {"train@mnist_cnn-sgd-9", "train@mnist_cnn-adam-9"} <= set(submitted)
    assert f"{len(submitted)} of {len(submitted)} stages failed on the cluster" in output
    for stage in submitted:  # once each: no retry
        assert output.count(f"{stage} failed: {message}") == 1, output[-6000:]
    run(["git", "checkout", "params.yaml"], root, env)


def test_ctrl_c_on_the_driver_cancels_its_tasks(setup) -> None:
    """SIGINT to the runner mid-training: the task stops its stage, whose MLflow run ends
    KILLED (by the stage, or by the runner where the stage could not in time); the runner
    exits 130 and nothing of the stage runs on."""
    root, address, env = setup
    argv = [sys.executable, "-m", "mnist_optimizers.parallel", "--address", address,
            "-S", "train.seeds=[11]", "-S", "train.epochs=500"]  # fmt: skip
    # (500 epochs: no training ends before the cancel reaches it, however loaded the machine)
    client = mlflow.MlflowClient(store(root))
    with tempfile.TemporaryFile() as out:
        runner = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # (a test run started in the background, `pytest &`, ignores SIGINT, and so would the
        # runner it starts)
        try:
            deadline = time.monotonic() + RUNNER_TIMEOUT_SECONDS
            running = []
            while not running and time.monotonic() < deadline and runner.poll() is None:
                time.sleep(0.5)
                with contextlib.suppress(Exception):
                    experiment = client.get_experiment_by_name("mnist-optimizers")
                    running = client.search_runs(
                        [experiment.experiment_id],
                        "tags.`dvc.stage` LIKE 'train@%-11' and attributes.status = 'RUNNING'",
                    )
            assert running, "no training of seed 11 started"
            runner.send_signal(signal.SIGINT)
            code = runner.wait(timeout=180)
        finally:
            if runner.poll() is None:
                runner.kill()
        out.seek(0)
        output = out.read().decode(errors="replace")
    assert code == 130, output[-6000:]
    assert "cancelling" in output, output[-6000:]
    for run_ in running:
        assert client.get_run(run_.info.run_id).info.status == "KILLED", output[-6000:]
    deadline = time.monotonic() + 30
    while any("stages.train" in c for c in processes.tagged(env[processes.TAG_VARIABLE]).values()):
        assert time.monotonic() < deadline, "a cancelled stage still runs"
        time.sleep(1)
    run(["git", "checkout", "params.yaml"], root, env)


def test_through_a_remote_and_a_server_killing_the_second_node_still_finishes_every_stage(
    setup, tmp_path
) -> None:
    """As on many machines: inputs and results go through the default DVC remote, the runs
    to the tracking server (PostgreSQL), and a local store is refused before any task. Every
    process of the second node is killed in the middle of a training (the machine dies): Ray
    runs the task again on the head, and the dead attempt's run ends FAILED."""
    root, address, env = setup
    remote = tmp_path / "dvc-remote"
    dvc(root, env, "remote", "add", "--default", "shared", str(remote))
    run(["git", "commit", "-qam", "remote"], root, env)
    argv = [sys.executable, "-m", "mnist_optimizers.parallel", "--address", address]
    refused = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                             timeout=RUNNER_TIMEOUT_SECONDS)  # fmt: skip
    assert refused.returncode == 1 and "cannot share a local store" in refused.stderr
    assert "on the cluster" not in refused.stderr
    found: dict = {}
    stop = threading.Event()
    with servers.postgres() as pg:
        backend = servers.create_database(pg, "mlflow_parallel")
        with servers.tracking_server(backend, tmp_path / "artifacts") as url:
            killer = threading.Thread(target=kill_second_node_mid_training, args=(url, found, stop))
            killer.start()
            try:  # a new seed: stages the other tests did not run; 3 epochs: time to kill one
                output = run_runner(root, env | {"MLFLOW_TRACKING_URI": url}, address,
                                    "--git-url", str(root), "-S", "train.seeds=[7]",
                                    "-S", "train.epochs=3")  # fmt: skip
            finally:
                stop.set()
                killer.join(timeout=30)
            by_stage = runs_by_stage(url)
            killed = mlflow.MlflowClient(url).get_run(found["run"]) if "run" in found else None
    assert found.get("killed"), f"no training ran on the second node:\n{output[-6000:]}"
    assert {"train@mnist_cnn-sgd-7", "train@mnist_cnn-adam-7"} <= set(finished_tasks(output)), output[-6000:]
    assert "Data and pipelines are up to date" in dvc(root, env, "status")
    assert list((remote / "runs").iterdir()), "no run cache in the remote"
    assert killed.info.status == "FAILED"
    stage = killed.data.tags["dvc.stage"]
    statuses = sorted(r.info.status for r in by_stage[stage])
    assert statuses == ["FAILED", "FINISHED"], (stage, statuses)
    for name in ("sgd", "adam"):
        finished = [r for r in by_stage[f"train@mnist_cnn-{name}-7"] if r.info.status == "FINISHED"]
        assert len(finished) == 1, f"train@mnist_cnn-{name}-7"
    assert not [r for rs in by_stage.values() for r in rs if r.info.status == "RUNNING"]


def test_the_runner_refuses_uncommitted_code_a_local_store_and_no_address(monkeypatch) -> None:
    outputs = {"reports/report", "metrics/evaluate.json"}
    with pytest.raises(PipelineError, match=r"uncommitted changes: stages/train.py\. The tasks"):
        parallel.check_code_committed(" M stages/train.py\n M params.yaml\n", outputs)
    # What travels with the tasks, and what the pipeline itself rewrites (a run before this)
    changes = " M params.yaml\n M dvc.lock\n M models/.gitignore\n M metrics/evaluate.json\n"
    parallel.check_code_committed(changes + " M reports/report/report.html\n", outputs)
    with pytest.raises(PipelineError, match="uncommitted changes: reports/reportx.md"):
        parallel.check_code_committed(" M reports/reportx.md\n", outputs)
    for uri in ("sqlite:////p/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"):
        with pytest.raises(PipelineError, match="cannot share a local store"):
            parallel.check_shared_tracking_uri(uri)
    parallel.check_shared_tracking_uri("http://10.0.0.5:5000")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # ray.init would start a cluster here
    with pytest.raises(PipelineError, match="no cluster address: pass --address"):
        parallel.Cluster(parallel.ClusterConfig(address=None))
    started = time.monotonic()  # nothing listens there: one message, at once
    with pytest.raises(PipelineError, match="Ray cluster 127.0.0.2:1: nothing answers there"):
        parallel.Cluster(parallel.ClusterConfig(address="127.0.0.2:1"))
    assert time.monotonic() - started < 10


def test_a_wrong_address_fails_at_once_before_any_work(tmp_path, tiny_mirror) -> None:
    """As a user types it, with nothing listening there: one message within seconds (Ray
    itself retries for minutes), before the runner prepares any input."""
    mirror, sha256 = tiny_mirror
    root = tmp_path / "project"
    env = project_repo(root, mirror, tiny_params(sha256))
    argv = [sys.executable, "-m", "mnist_optimizers.parallel", "--address", "127.0.0.2:1"]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr[-4000:]
    assert "Ray cluster 127.0.0.2:1: nothing answers there" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "data" / "raw").exists()  # no `dvc repro preprocess` before the check


def test_after_joining_the_cluster_sigterm_still_stops_the_runner_as_ctrl_c_does() -> None:
    """ray.init sets its own SIGTERM handler (sys.exit(15): no cancel message, exit 15);
    the runner puts its own back, which cancels the tasks and exits 143."""
    from mnist_optimizers import cli

    class Ray:  # Ray's init, as far as signals go
        @staticmethod
        def init(**_):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        cluster = parallel.Cluster.__new__(parallel.Cluster)
        cluster.ray = Ray
        cluster.connect(f"127.0.0.1:{listener.getsockname()[1]}")
        assert signal.getsignal(signal.SIGTERM) is cli._on_stop_signal
    finally:
        listener.close()
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGALRM, before[1])


def test_a_task_names_its_runs_for_the_driver_and_runs_only_where_it_can_log() -> None:
    spec = parallel_task.TaskSpec("train@mnist_cnn-adam-42", "t1", "u", "c", "", "", "r", 60.0, cpus=3)
    env = parallel_task.stage_env(spec)
    assert env[mlflow_runs.PARALLEL_TASK_ENV] == "t1"
    assert (env["TF_NUM_INTRAOP_THREADS"], env["TF_NUM_INTEROP_THREADS"]) == ("3", "1")
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU task leaves a node's GPUs alone
    with pytest.raises(CommandFailed, match="sqlite:///m.db: a task on another machine"):
        parallel_task.run_task(
            dataclasses.replace(spec, env={"MLFLOW_TRACKING_URI": "sqlite:///m.db"})
        )
    one_machine = dataclasses.replace(spec, remote_url=None, host="another-host")
    with pytest.raises(CommandFailed, match="not on another-host: a cluster of several machines"):
        parallel_task.run_task(one_machine)
    gpu = parallel_task.stage_env(dataclasses.replace(spec, gpus=1))
    assert "CUDA_VISIBLE_DEVICES" not in gpu or gpu["CUDA_VISIBLE_DEVICES"] != ""


def test_the_sweep_ends_left_runs_failed_after_a_death_and_killed_after_a_cancel(project) -> None:
    """Runs a task's attempts left RUNNING: FAILED when the attempt died, KILLED when the
    driver cancelled the task (Ctrl-C) and the stage could not end its run itself; a run of
    another task, and a run that already ended, are left alone."""
    # The project's own store, as the sweep finds it; not a URI another test left set.
    client = mlflow.MlflowClient(mlflow_store.tracking_uri())
    experiment = client.create_experiment("mnist-optimizers")

    def started(task_id: str) -> str:
        run_ = client.create_run(experiment, tags={mlflow_runs.PARALLEL_TASK_TAG: task_id})
        return run_.info.run_id

    died, cancelled, other, finished = started("t1"), started("t2"), started("t3"), started("t2")
    client.set_terminated(finished, "FINISHED")
    assert parallel.end_dead_attempts(["t1"]) == [died]
    assert parallel.end_dead_attempts(["t2"], cancelled=True) == [cancelled]
    status = {r: client.get_run(r).info.status for r in (died, cancelled, other, finished)}
    assert status == {died: "FAILED", cancelled: "KILLED", other: "RUNNING", finished: "FINISHED"}
    assert "died" in client.get_run(died).data.tags["pipeline.end_reason"]
    assert "cancelled" in client.get_run(cancelled).data.tags["pipeline.end_reason"]
