"""Part `cluster`: the cluster runner on a two-node Ray cluster on this machine (1 CPU per
node; tests/ray_local.py starts it) against `dvc repro` of the same stages, on full MNIST.

1. a clean clone with a local-folder DVC remote, an MLflow tracking server on SQLite;
2. `python -m mnist_optimizers.parallel -S compare=[adam,nadam] -S train.seeds=[42]`,
   timed: its log gives each task's seconds (waited, clone, repro, push);
3. the same again with dvc.lock put back: every task restores its stage from the run cache,
   so its seconds are the cluster's own cost per task (start, clone, pull, push);
4. `dvc repro` of the same params in a fresh clone, timed (the ratio);
5. `dvc repro` again with TensorFlow's threads at 1, as each task had: its metrics and models
   must equal the runner's (times and run ids aside).

From these, the projection: the full comparison (15 optimizers x 5 seeds, both settings) on
1, 4, 16 and 64 machines like this one (2 cores: 2 tasks of 1 CPU at once), each round's tasks
scheduled longest first on the free CPUs.
"""

from __future__ import annotations

import heapq
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import ROOT
from tests import servers
from tests.ray_local import comparable, ray_cluster, training_lock

SET = ("compare=[adam,nadam]", "train.seeds=[42]")
FULL = {"optimizers": 15, "seeds": 5}
MACHINES = (1, 4, 16, 64)
SLOTS_PER_MACHINE = 2  # a machine of this size: 2 cores, a task of 1 CPU each
TASK_LINE = re.compile(
    r"\] (?P<stage>\S+) on .*?: (?P<what>ran|restored from the run cache) in "
    r"(?P<total>[\d.]+) s \((?P<parts>[^)]*)\)"
)
ROUND_LINE = re.compile(r"round of (\d+) stages: ([\d.]+) s on the cluster, ([\d.]+) s restoring")


def run(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run ``argv``; its wall seconds and output (appended to ``log``); fail on an error."""
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=7200)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}  ({seconds:.1f} s)\n{output}\n")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{output[-5000:]}")
    return seconds, output


def tasks(output: str) -> list[dict]:
    """Each task's line of the runner's log: its stage, whether it ran, and its seconds."""
    found = []
    for match in TASK_LINE.finditer(output):
        parts = dict(p.rsplit(" ", 2)[:2] for p in match["parts"].split(", "))
        found.append(
            {
                "stage": match["stage"],
                "ran": match["what"] == "ran",
                "total": float(match["total"]),
                **{k: float(v) for k, v in parts.items()},
            }
        )
    return found


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of ``durations`` on ``slots`` CPUs, longest first on the first free one."""
    free = [0.0] * slots
    for duration in sorted(durations, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def projection(measured: dict) -> list[dict]:
    """Expected wall time of the full comparison on each number of machines."""
    task = measured["task_seconds"]  # a whole task that trained, by kind
    n, seeds = FULL["optimizers"], FULL["seeds"]
    round1 = [task["train"]] * (n * seeds) + [task["tune"]] * n
    round2 = [task["train"]] * (n * seeds)
    rows = []
    local = measured["driver_fixed_seconds"] + measured["restore_seconds_per_stage"] * (
        len(round1) + len(round2)
    )
    for machines in MACHINES:
        slots = machines * SLOTS_PER_MACHINE
        cluster = makespan(round1, slots) + makespan(round2, slots)
        rows.append(
            {
                "machines": machines,
                "cluster_seconds": cluster,
                "driver_seconds": local,
                "total_seconds": cluster + local,
            }  # fmt: skip
        )
    return rows


def bench_cluster(log: Path) -> dict:
    """The measurements above; every raw number."""
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-cluster-{os.getpid()}"
    work.mkdir(parents=True)
    env = servers.tool_env({"PIPELINE_JOBS": "1"})
    env = {k: v for k, v in env.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    dvc = [sys.executable, "-m", "dvc"]
    try:
        driver = work / "driver"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(driver)], check=True)
        run([*dvc, "remote", "add", "--default", "shared", str(work / "remote")], driver, env, log)
        run(["git", "commit", "-qam", "a DVC remote for the benchmark"], driver, env, log)
        port = servers.free_port()
        url = f"http://127.0.0.1:{port}"
        mlflow_server = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
            "--port", str(port), "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
            "--artifacts-destination", str(work / "artifacts"),
        ]  # fmt: skip
        with (
            servers.server(mlflow_server, f"{url}/health", work / "mlflow.log", env),
            ray_cluster(env) as (address, cluster_env),
        ):
            cluster_env = cluster_env | {"MLFLOW_TRACKING_URI": url}
            runner = [sys.executable, "-m", "mnist_optimizers.parallel", "--address",
                      address, "--git-url", str(driver)]  # fmt: skip
            sets = [arg for value in SET for arg in ("-S", value)]
            print("  cluster: the runner", flush=True)
            runner_seconds, output = run([*runner, *sets], driver, cluster_env, log)
            ran = tasks(output)
            rounds = [(float(m[2]), float(m[3])) for m in ROUND_LINE.finditer(output)]
            shutil.copy2(driver / "dvc.lock", work / "runner.lock")
            print("  cluster: the runner, every stage in the run cache", flush=True)
            run(["git", "checkout", "dvc.lock"], driver, env, log)
            restore_seconds, output = run([*runner, *sets], driver, cluster_env, log)
            restored = tasks(output)
        sequential = {}
        for name, threads in (("dvc_repro", None), ("dvc_repro_1_thread", "1")):
            print(f"  cluster: {name}", flush=True)
            clone = work / name
            subprocess.run(["git", "clone", "-q", str(driver), str(clone)], check=True)
            shutil.copy2(driver / "params.yaml", clone / "params.yaml")
            seq_env = env | ({"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1"}
                             if threads else {})  # fmt: skip
            sequential[name], _ = run([*dvc, "repro"], clone, seq_env, log)
        equal = training_lock(work / "dvc_repro_1_thread") == training_lock(driver)
        outputs = sorted(
            p.relative_to(driver)
            for p in [*driver.glob("metrics/*/adam*"), *driver.glob("metrics/*/nadam*"),
                      *driver.glob("models/*adam*.keras")]
        )  # fmt: skip
        differing = [
            str(path) for path in outputs
            if comparable(work / "dvc_repro_1_thread" / path) != comparable(driver / path)
        ]  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def kind(stage: str) -> str:
        return "tune" if stage.startswith("tune@") else "train"

    trained = [t for t in ran if t["ran"]]
    stages = len(ran)
    measured = {
        # A whole task that trained: clone, pull, train, push (its Ray start aside).
        "task_seconds": {
            k: statistics.median(t["total"] for t in trained if kind(t["stage"]) == k)
            for k in ("train", "tune")
        },
        # A task whose stage is in the run cache does all a task does but the training.
        "overhead_seconds": statistics.median(t["total"] for t in restored),
        "start_seconds": min(t["waited"] for t in restored),
        # Here, besides the rounds: inputs, Ray's start, evaluate, report, register.
        "driver_fixed_seconds": runner_seconds - sum(r[0] + r[1] for r in rounds),
        "restore_seconds_per_stage": sum(r[1] for r in rounds) / stages,
    }
    return {
        "stages": SET,
        "runner_seconds": runner_seconds,
        "restore_runner_seconds": restore_seconds,
        "rounds": rounds,
        "tasks": ran,
        "restored_tasks": restored,
        "sequential_seconds": sequential,
        "ratio": runner_seconds / sequential["dvc_repro"],
        "ratio_1_thread": runner_seconds / sequential["dvc_repro_1_thread"],
        "lock_equal": equal,
        "outputs_compared": [str(p) for p in outputs],
        "outputs_differing": differing,
        "measured": measured,
        "projection": projection(measured),
    }
