"""The benchmarks' harness: timing a command with its peak memory, summaries of repeated
runs, a clone of the project to measure in, and the machine's description."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


from mnist_optimizers.paths import run_key

ROOT = Path(__file__).resolve().parents[1]

OPTIMIZERS = ("sgd", "adagrad", "adam", "rmsprop")

SEED = 42  # the seed of the runs timed one at a time: train@mnist_cnn-adam-42
WORKLOAD = "mnist_cnn"  # the tutorial's CNN

ADAM = f"train@{WORKLOAD}-{run_key('adam', SEED)}"


@dataclass(frozen=True)
class Measured:
    """One command's wall time and the peak resident memory of its whole process tree."""

    seconds: float
    max_rss_mib: float


def measure(command: list[str], cwd: Path, log: Path) -> Measured:
    """Run ``command``, appending its output to ``log``; fail loudly if it fails."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives this child's rusage; its ru_maxrss covers the descendants it reaped too.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}; see {log}")
    return Measured(seconds, usage.ru_maxrss / 1024)


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(stats: dict[str, float], digits: int = 2, unit: str = "") -> str:
    """`median (min-max)unit`."""
    return (
        f"{stats['median']:.{digits}f}{unit} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
    )


# --------------------------------------------------------------------------- the clone


def make_clone(workdir: Path, name: str = "project") -> Path:
    """A clone of the committed project sharing this project's DVC cache, the outputs the
    cache holds checked out (a part that needs a missing one says so when it runs)."""
    clone = workdir / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    dvc(clone, "cache", "dir", "--local", str(ROOT / ".dvc" / "cache"))
    dvc(clone, "checkout", "-q", "--allow-missing")
    return clone


def dvc(cwd: Path, *args: str) -> str:
    """Run a dvc command in ``cwd`` and return its output."""
    result = subprocess.run(dvc_command(*args), cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def dvc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def set_params(clone: Path, **changes: object) -> None:
    """Set keys in the clone's params.yaml as `dvc exp run -S` does (`train__precision=
    "float32"` sets train.precision)."""
    from dvc.utils.hydra import apply_overrides

    overrides = [f"++{k.replace('__', '.')}={json.dumps(v)}" for k, v in changes.items()]
    apply_overrides(clone / "params.yaml", overrides)


def train_metrics(clone: Path, name: str) -> dict:
    return json.loads((clone / "metrics" / "train" / WORKLOAD / f"{name}.json").read_text())


def epoch_seconds(clone: Path, name: str) -> list[float]:
    lines = (clone / "metrics" / "history" / WORKLOAD / f"{name}.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("epoch_seconds")
    return [float(line.split(",")[column]) for line in lines[1:]]


# --------------------------------------------------------------------------- the parts


def cpu_info() -> dict:
    """CPU model, usable cores, vector flags and the peak FLOP/s they allow."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name: str) -> str:
        match = re.search(rf"^{name}\s*:\s*(.+)$", text, re.M)
        return match.group(1).strip() if match else "?"

    flags = set(field("flags").split())
    family = int(field("cpu family")) if field("cpu family").isdigit() else 0
    mhz = float(field("cpu MHz")) if field("cpu MHz") != "?" else 0.0
    cores = len(os.sched_getaffinity(0))
    # fp32 FLOP per cycle per core = FMA pipes x lanes x 2. AMD Zen 4 (family 25) runs
    # AVX-512 on two 256-bit FMA pipes (32); Zen 5 (26) and Intel server cores with two
    # 512-bit FMA units (64); AVX2 with two FMA pipes (32).
    if "avx512f" in flags:
        per_cycle = 32 if field("vendor_id") == "AuthenticAMD" and family == 25 else 64
    elif "avx2" in flags:
        per_cycle = 32
    else:
        per_cycle = 8
    return {
        "model": field("model name"),
        "vendor": field("vendor_id"),
        "family": family,
        "cores": cores,
        "mhz": mhz,
        "flags": sorted(
            flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}
        ),
        "fp32_flop_per_cycle_per_core": per_cycle,
        "peak_fp32_gflops": cores * mhz / 1000 * per_cycle,
    }


PROBE_IMAGES = 20000  # training images of one fit_probe epoch: ~15 s alone on 2 cores


def probe(out: Path, *flags: str) -> list[str]:
    """The command line of one benchmarks.fit_probe run writing ``out``."""
    return [
        sys.executable,
        "-m",
        "benchmarks.fit_probe",
        "--images",
        str(PROBE_IMAGES),
        "--out",
        str(out),
        *flags,
    ]


def run_together(commands: list[list[str]], cwd: Path, log: Path, env: dict) -> None:
    """Start ``commands`` at once and wait for all; fail loudly if one fails."""
    with log.open("a") as out:
        processes = []
        for command in commands:
            out.write(f"\n$ {' '.join(command)} &\n")
            out.flush()
            processes.append(
                subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
            )
        codes = [process.wait() for process in processes]
    if any(codes):
        raise RuntimeError(f"a probe exited {codes}; see {log}")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "dvc", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
