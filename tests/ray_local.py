"""A real two-node Ray cluster on this machine, for the cluster runner's tests and its
benchmark: a head and a second node, each its own `ray start --block` with 1 CPU, a small
object store and ports of its own, token authentication on. And how two runs' outputs are
compared: by content, times and run ids left out.

Ray 2.60 takes 127.0.0.1 for a single-node cluster only: a node given it advertises the
machine's network address instead, and its servers listen on every interface whenever that
address is not 127.0.0.1 (ray/_private/services.py, resolve_ip_for_localhost). So the nodes
talk over the loopback address 127.0.0.2, and the token keeps anyone else from joining or
submitting work while the cluster runs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mnist_optimizers import parallel_task

from . import processes, servers

NODE_IP = "127.0.0.2"
NODE_TAG = "PIPELINE_TEST_RAY_NODE"  # which node a process belongs to: head, second
START_SECONDS = 120
TRAINING = ("train@", "tune@", "train_tuned@")


def ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--block", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def node_ports(base: int) -> list[str]:
    """Ports of one node's servers and workers, from ``base`` on: distinct per node."""
    return [
        f"--node-manager-port={base}", f"--object-manager-port={base + 1}",
        f"--dashboard-agent-listen-port={base + 2}", f"--dashboard-agent-grpc-port={base + 3}",
        f"--runtime-env-agent-port={base + 4}", f"--metrics-export-port={base + 5}",
        f"--min-worker-port={base + 10}", f"--max-worker-port={base + 59}",
    ]  # fmt: skip


def wait_for_nodes(address: str, count: int, env: dict[str, str], logs: list[Path]) -> None:
    """Until ``count`` nodes are alive, within START_SECONDS; else fail with the logs."""
    check = (
        "import ray; ray.init(address=%r, logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))" % address
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        result = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
        )
        if result.returncode == 0 and result.stdout.strip() == str(count):
            return
        time.sleep(2)
    pytest.fail(
        f"the Ray cluster did not reach {count} nodes within {START_SECONDS} s:\n"
        + "\n".join(servers.tail(log) for log in logs)
    )


@contextlib.contextmanager
def ray_cluster(env: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    """A head and a second node, 1 CPU each; yields the address and the environment that
    reaches it. Every process of the cluster is stopped when the block ends."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Unix socket paths stay short
    tag = f"ray-cluster-{temp.name}"
    env = env | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        parallel_task.WORK_DIR_ENV: str(temp / "work"),  # the nodes' clones and DVC cache
        processes.TAG_VARIABLE: tag,
    }
    # Below the kernel's ephemeral ports (32768 and up on Linux), which free_port() and
    # every outgoing connection take: 60 ports for each node.
    base = random.randrange(20000, 32768 - 120, 120)
    port = servers.free_port()
    address = f"{NODE_IP}:{port}"
    common = ["--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats"]
    logs = [temp / "head.log", temp / "second.log"]
    try:
        ray_start(
            ["--head", f"--node-ip-address={NODE_IP}", f"--port={port}", f"--temp-dir={temp}",
             "--include-dashboard=false", f"--ray-client-server-port={servers.free_port()}",
             *common, *node_ports(base)],
            env | {NODE_TAG: "head"}, logs[0],
        )  # fmt: skip
        wait_for_nodes(address, 1, env, logs)
        ray_start(
            [f"--address={address}", f"--node-ip-address={NODE_IP}", *common,
             *node_ports(base + 60)],
            env | {NODE_TAG: "second"}, logs[1],
        )  # fmt: skip
        wait_for_nodes(address, 2, env, logs)
        yield address, env
    finally:
        for pid in processes.tagged(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        processes.stop_tagged(tag, 15)  # `ray start --block` leaves its servers to SIGKILL
        time.sleep(1)
        left = processes.tagged(tag)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes outlived the cluster:\n{processes.describe(left)}"


VOLATILE = ("seconds", "run_id", "date")  # in a key or column name: times, dates, MLflow ids


def comparable(path: Path):
    """The content of an output with its times and run ids left out; a model's weights."""
    if path.suffix == ".json":

        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if not any(w in k for w in VOLATILE)}
            if isinstance(value, list):
                return [strip(v) for v in value]
            return value

        return strip(json.loads(path.read_text()))
    if path.suffix == ".csv":
        table = pd.read_csv(path)
        return table.drop(columns=[c for c in table if any(w in c for w in VOLATILE)]).to_dict()
    if path.suffix == ".keras":
        import keras

        return [w.tolist() for w in keras.models.load_model(path, compile=False).get_weights()]
    return path.read_bytes()


def training_lock(root: Path) -> dict:
    """dvc.lock's training and tuning stages, and those before them: commands, params and
    deps whole, but the digests of the pipeline's own metrics and models, which cover times
    and run ids (those files are compared by content)."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]

    def digest(dep: dict) -> str:
        return "by content" if dep["path"].startswith(("metrics/", "models/")) else dep["md5"]

    return {
        name: {
            "cmd": entry["cmd"],
            "deps": {dep["path"]: digest(dep) for dep in entry.get("deps", [])},
            "params": entry.get("params"),
            "outs": [out["path"] for out in entry.get("outs", [])],
        }
        for name, entry in stages.items()
        if name.startswith(TRAINING) or name in ("check_params",) or name.startswith(("download@", "preprocess@"))
    }
