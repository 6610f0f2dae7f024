"""The hardware a stage runs on: the backend's threads, sized from the cores this process may
use and the number of stages that run at once ($PIPELINE_JOBS), and what the CPU and GPUs can
do (bfloat16, the device a model trains on).

Thread counts change how oneDNN splits its sums, so they change a model's weights in the last
bits: two runs compare bit for bit only with the same `intra_op` count (docs/benchmarks.md).
TensorFlow sizes its pools when told; JAX (XLA) sizes its pool from the process's CPU
affinity, so on JAX a stage that shares the machine is pinned to its share of the cores.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_optimizers import backend
from mnist_optimizers.errors import ParamsError, shown

JOBS_ENV = "PIPELINE_JOBS"
# TensorFlow's own variables: when set, they win over what this module works out.
TF_INTRA_ENV = "TF_NUM_INTRAOP_THREADS"
TF_INTER_ENV = "TF_NUM_INTEROP_THREADS"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Threads:
    intra_op: int  # threads inside one op (a convolution's oneDNN kernel)
    inter_op: int  # ops run at once


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this cgroup in cores (`docker run --cpus 2` gives 2.0), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return cores


def parallel_jobs(environ: dict[str, str] | os._Environ = os.environ) -> int:
    """How many stages share the machine: $PIPELINE_JOBS, 1 when unset."""
    return positive_env(JOBS_ENV, environ) if environ.get(JOBS_ENV, "").strip() else 1


def positive_env(name: str, environ: dict[str, str] | os._Environ = os.environ) -> int:
    """The positive integer in environment variable ``name``, else a ParamsError naming it."""
    value = environ.get(name, "").strip()
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ParamsError(f"${name}: expected a positive integer, got {shown(value)}")
    return number


def thread_settings(cores: int, jobs: int) -> Threads:
    """Split ``cores`` evenly between ``jobs`` stages; each runs one op at a time.

    One op at a time: the CNN is a chain of layers, so there is little to run side by side,
    and an inter-op pool wider than one adds threads that compete for the same cores
    (measured in docs/benchmarks.md, part `threads`)."""
    return Threads(intra_op=max(1, cores // jobs), inter_op=1)


def start(wanted_backend: str) -> Threads:
    """Before a stage's first op: check that Keras runs on ``wanted_backend`` (`train.backend`),
    size the threads, make ops deterministic; return the thread counts."""
    backend.check(wanted_backend)
    threads = configure_threads()
    backend.deterministic_ops()
    return threads


def configure_threads() -> Threads:
    """Size the backend's threads before any op runs; return the counts in use."""
    jobs = parallel_jobs()
    cores = available_cores()
    wanted = thread_settings(cores, jobs)
    if backend.name() == "jax":
        threads = pin_cores(wanted)
    else:
        threads = configure_tensorflow_threads(wanted)
    log.info(
        "threads: %d intra-op, %d inter-op (%d cores, %d parallel jobs)",
        threads.intra_op,
        threads.inter_op,
        cores,
        jobs,
    )
    return threads


# Where stages on JAX claim the cores they pin themselves to: one lock file per core, held
# (flock) for the process's life, so the kernel frees it however the process ends.
CORE_LOCKS = Path(tempfile.gettempdir()) / "mnist-optimizers-cores"
_held_cores: list[int] = []  # the open lock files of this process (their descriptors)


def pin_cores(wanted: Threads) -> Threads:
    """JAX: XLA's CPU pool has one thread per core of the process's affinity, so a share
    smaller than those cores pins the process to that many of them: cores no other stage on
    this machine holds (CORE_LOCKS), then, where too few are free, the lowest of the rest.
    Must run before JAX starts. inter_op is 0 in the result: XLA has no such pool."""
    allowed = sorted(os.sched_getaffinity(0))
    if wanted.intra_op < len(allowed):
        share: list[int] = []
        for core in allowed:
            if len(share) < wanted.intra_op and claim_core(core):
                share.append(core)
        share += [core for core in allowed if core not in share][: wanted.intra_op - len(share)]
        os.sched_setaffinity(0, share)
        log.info("threads: on JAX, pinned to cores %s (its pool follows the affinity)", share)
    for env in (TF_INTRA_ENV, TF_INTER_ENV):
        if os.environ.get(env):
            log.info("threads: $%s is TensorFlow's and is ignored on JAX", env)
    return Threads(intra_op=min(wanted.intra_op, len(allowed)), inter_op=0)


def claim_core(core: int) -> bool:
    """Hold ``core``'s lock file for the rest of this process; False if another holds it
    (or the lock folder cannot be used: another user's)."""
    try:
        CORE_LOCKS.mkdir(parents=True, exist_ok=True)
        fd = os.open(CORE_LOCKS / f"{core}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held_cores.append(fd)
    return True


def configure_tensorflow_threads(wanted: Threads) -> Threads:
    """Size TensorFlow's thread pools before any op runs; return the counts in use.

    $TF_NUM_INTRAOP_THREADS / $TF_NUM_INTEROP_THREADS, when set, are left to TensorFlow. Where
    TensorFlow already ran in this process (a notebook), its pools are fixed: they stay as
    they are, with a warning, and 0 in the result means TensorFlow's default (one per core)."""
    import tensorflow as tf

    pools = {
        "intra_op": (
            TF_INTRA_ENV,
            tf.config.threading.set_intra_op_parallelism_threads,
            tf.config.threading.get_intra_op_parallelism_threads,
        ),
        "inter_op": (
            TF_INTER_ENV,
            tf.config.threading.set_inter_op_parallelism_threads,
            tf.config.threading.get_inter_op_parallelism_threads,
        ),
    }
    used = {}
    for pool, (env, setter, getter) in pools.items():
        if os.environ.get(env):
            used[pool] = positive_env(env)
            continue
        try:
            setter(getattr(wanted, pool))
        except RuntimeError:  # "cannot be modified after initialization"
            log.warning(
                "threads: TensorFlow already started in this process; keeping its %s threads",
                pool.replace("_", "-"),
            )
        used[pool] = getter()
    return Threads(**used)


def cpuinfo() -> str:
    """/proc/cpuinfo, or "" where the system has none."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True when the CPU has BF16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16)."""
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", cpuinfo()) is not None


def cpu_bf16_is_fast() -> bool:
    """True where mixed_bfloat16 trains this CNN faster than float32: a CPU with AMX, with
    AVX-512 BF16 that is not Intel's (an AMD EPYC: 1.9x faster epochs), or with Arm BF16. On
    an Intel CPU with AVX-512 BF16 but no AMX, bfloat16 epochs were 1.4x slower than float32
    (docs/experiments.md)."""
    info = cpuinfo()
    if re.search(r"\bamx_bf16\b", info):
        return True
    if re.search(r"\bavx512_bf16\b", info):
        return "GenuineIntel" not in info
    return cpu_has_bf16()


def gpu_has_bf16() -> bool:
    """True when every GPU the backend sees computes bfloat16 natively (CUDA compute
    capability 8.0 or later: Ampere, Hopper, ...); False without a GPU."""
    capabilities = [backend.gpu_details(gpu).get("compute_capability") for gpu in backend.gpus()]
    return bool(capabilities) and all(c is not None and tuple(c) >= (8, 0) for c in capabilities)


def cpu_name() -> str:
    """The CPU's model as the kernel names it (`Intel(R) Xeon(R) Processor`), or the machine's
    architecture where it does not."""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo(), re.M)
    return found.group(1).strip() if found else platform.machine() or "unknown"


def describe_device(name: str | None, details: dict[str, Any]) -> str:
    """``name`` (`GPU:0`) as a person reads it, with the GPU's model and compute capability
    where the backend knows them; for None, the CPU and its model (`CPU (Intel(R) Xeon(R)
    Processor)`)."""
    if name is None:
        return f"CPU ({cpu_name()})"
    facts = [details.get("device_name")]
    if capability := details.get("compute_capability"):
        facts.append(f"compute capability {'.'.join(str(part) for part in capability)}")
    facts = [fact for fact in facts if fact]
    return f"{name} ({', '.join(facts)})" if facts else name


def training_device() -> str:
    """Where this process trains: both backends place the model's ops on the first GPU they
    see (CUDA_VISIBLE_DEVICES decides which those are), else on the CPU."""
    visible = backend.gpus()
    if not visible:
        return describe_device(None, {})
    return describe_device(backend.gpu_name(visible[0]), backend.gpu_details(visible[0]))
