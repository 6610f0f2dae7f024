"""Thread settings: from the cores a process may use and the stages running at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from mnist_optimizers import runtime
from mnist_optimizers.errors import ParamsError

from .conftest import PROJECT_ROOT


@pytest.mark.parametrize(
    ("cores", "jobs", "intra"),
    [(2, 1, 2), (2, 2, 1), (8, 3, 2), (16, 4, 4), (1, 4, 1)],
)
def test_cores_are_split_between_parallel_jobs(cores: int, jobs: int, intra: int) -> None:
    assert runtime.thread_settings(cores, jobs) == runtime.Threads(intra_op=intra, inter_op=1)


def test_parallel_jobs_come_from_the_environment() -> None:
    assert runtime.parallel_jobs({}) == 1
    assert runtime.parallel_jobs({"PIPELINE_JOBS": " 3 "}) == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_job_count_is_one_clear_error(value: str) -> None:
    with pytest.raises(
        ParamsError, match=rf"\$PIPELINE_JOBS: expected a positive integer, got '{value}'"
    ):
        runtime.parallel_jobs({"PIPELINE_JOBS": value})


def test_cgroup_quota_in_cores(tmp_path: Path) -> None:
    assert runtime.cgroup_cpu_limit(tmp_path) is None  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker run --cpus 1.5
    assert runtime.cgroup_cpu_limit(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cgroup_cpu_limit(v1) == 4.0


def test_available_cores_respect_a_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 1.5)
    assert runtime.available_cores() == 2
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.available_cores() == 8


def configured_in_fresh_process(env: dict[str, str]) -> str:
    """What TensorFlow reports after configure_threads(), in a new interpreter (TensorFlow
    fixes its thread pools once per process)."""
    code = (
        "import tensorflow as tf; from mnist_optimizers import runtime; t = runtime.configure_threads(); "
        "print(t.intra_op, t.inter_op, tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split("\n")[-2]


def test_configure_threads_sets_tensorflow_from_the_job_count() -> None:
    cores = runtime.available_cores()
    half = max(1, cores // 2)
    assert configured_in_fresh_process({"PIPELINE_JOBS": "2"}) == f"{half} 1 {half} 1"


def test_tensorflows_own_variables_win() -> None:
    env = {"TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "2", "PIPELINE_JOBS": "2"}
    # TensorFlow reads its variables when its runtime starts, so its getters still say 0.
    assert configured_in_fresh_process(env) == "3 2 0 0"


@pytest.mark.skipif(runtime.available_cores() < 2, reason="one core: nothing to share")
def test_on_jax_stages_sharing_the_machine_are_pinned_to_their_own_cores(tmp_path: Path) -> None:
    """XLA sizes its CPU pool from the affinity: with two jobs, each stage gets half the
    cores, and a second stage started while the first runs gets the other half."""
    code = (
        "import os, sys, keras; from mnist_optimizers import runtime; "
        "t = runtime.configure_threads(); keras.ops.zeros(1); "
        "print(keras.backend.backend(), t.intra_op, t.inter_op, "
        "sorted(os.sched_getaffinity(0)), flush=True); sys.stdin.read()"
    )
    # TMPDIR: this test's own core locks, whatever else runs on the machine.
    env = {"PATH": "/usr/bin:/bin", "KERAS_BACKEND": "jax", "PIPELINE_JOBS": "2",
           "TMPDIR": str(tmp_path)}  # fmt: skip
    half = runtime.available_cores() // 2
    stages = [subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
              for _ in range(2)]  # fmt: skip
    try:
        first = stages[0].stdout.readline().split(" ", 3)  # it holds its cores until stdin ends
        second = stages[1].stdout.readline().split(" ", 3)
    finally:
        for stage in stages:
            try:
                stage.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                stage.kill()
                stage.communicate()
    assert first[:3] == second[:3] == ["jax", str(half), "0"]
    cores = [set(json.loads(line[3])) for line in (first, second)]
    assert len(cores[0]) == len(cores[1]) == half and not cores[0] & cores[1]


# TensorFlow's pools and variables: on JAX, the affinity above does their job.
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's thread pools"
)


@tensorflow_only
def test_pools_fixed_earlier_in_the_process_stay_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # conftest sized the pools for one job on this machine's cores; a notebook then asks for
    # two jobs on a machine said to have more cores, so that it wants another thread count
    # than TensorFlow already has, whatever the core count here.
    cores = runtime.available_cores()
    monkeypatch.setattr(runtime, "available_cores", lambda: 2 * (cores + 1))
    monkeypatch.setenv("PIPELINE_JOBS", "2")
    assert runtime.configure_threads() == runtime.Threads(intra_op=cores, inter_op=1)
    assert "TensorFlow already started in this process; keeping its intra-op threads" in (
        caplog.text
    )


@tensorflow_only
@pytest.mark.parametrize("variable", ["TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"])
def test_a_thread_count_that_is_not_a_number_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "two")
    with pytest.raises(
        ParamsError, match=rf"^\${variable}: expected a positive integer, got 'two'$"
    ):
        runtime.configure_threads()
