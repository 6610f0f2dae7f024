"""Benchmark the pipeline: against plain Keras, where a stage's time goes, no-op and one-param
reruns, memory, FLOP/s against the CPU's peak, and float32 against mixed_bfloat16.

    python -m benchmarks.run                          # everything: about an hour on 2 cores
    python -m benchmarks.run --only noop,memory,flops # a part
    python -m benchmarks.run --runs 5

Needs a completed `dvc repro` (and MNIST_MIRROR where the public mirrors are out of reach).
It works in a temporary clone of the committed project that shares this project's DVC cache,
so the workspace, dvc.lock and mlflow.db are left as they are. Every figure is the median of
`--runs` runs with min and max; each comparison alternates A and B and takes the ratio of each
pair. Writes BENCHMARKS.md and benchmarks/results.json (every raw number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from mnist_optimizers.paths import run_key

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "noop",
    "memory",
    "flops",
    "pipeline",
    "precision",
    "threads",
    "input",
    "parallel",
    "runcache",
)
OPTIMIZERS = ("sgd", "adagrad", "adam", "rmsprop")
SEED = 42  # the seed of the runs timed one at a time: train@adam-42
ADAM = f"train@{run_key('adam', SEED)}"


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


def make_clone(workdir: Path) -> Path:
    """A clone of the committed project sharing this project's DVC cache, outputs checked out."""
    clone = workdir / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    dvc(clone, "cache", "dir", "--local", str(ROOT / ".dvc" / "cache"))
    dvc(clone, "checkout", "-q")
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
    """Set dotted keys in the clone's params.yaml (`train.precision="float32"`)."""
    path = clone / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def train_metrics(clone: Path, name: str) -> dict:
    return json.loads((clone / "metrics" / "train" / f"{name}.json").read_text())


def epoch_seconds(clone: Path, name: str) -> list[float]:
    lines = (clone / "metrics" / "history" / f"{name}.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("epoch_seconds")
    return [float(line.split(",")[column]) for line in lines[1:]]


# --------------------------------------------------------------------------- the parts


def bench_noop(clone: Path, runs: int, log: Path) -> dict:
    """`dvc repro` and `dvc status` with everything up to date."""
    if "up to date" not in dvc(clone, "status"):
        raise RuntimeError("the clone's pipeline is not up to date: run `dvc repro` and commit")
    repro, status = [], []
    for _ in range(runs):
        repro.append(measure(dvc_command("repro"), clone, log).seconds)
        status.append(measure(dvc_command("status"), clone, log).seconds)
    return {"dvc_repro": summary(repro), "dvc_status": summary(status)}


def bench_memory(clone: Path, log: Path) -> dict:
    """Peak resident memory of each stage, forced, on the clone's (full) data."""
    stages = ["download", "preprocess", ADAM, "evaluate"]
    return {
        stage: measure(dvc_command("repro", "-f", "-s", stage), clone, log).max_rss_mib
        for stage in stages
    }


def bench_pipeline(clone: Path, runs: int, log: Path) -> dict:
    """A forced train@adam stage against the tutorial's plain script, alternating, and one
    changed learning rate through `dvc exp run` against the forced stage."""
    epochs = yaml.safe_load((clone / "params.yaml").read_text())["train"]["epochs"]
    rows = []
    for i in range(runs):
        stage = measure(dvc_command("repro", "-f", "-s", ADAM), clone, log)
        stage_metrics = train_metrics(clone, run_key("adam", SEED))
        plain_out = clone / "plain.json"
        plain = measure(
            [
                sys.executable,
                "-m",
                "benchmarks.plain_keras",
                "--epochs",
                str(epochs),
                "--out",
                str(plain_out),
            ],
            clone,
            log,
        )
        plain_metrics = json.loads(plain_out.read_text())
        learning_rate = round(0.0011 + 0.0001 * i, 5)  # new each time: no run-cache hit
        # Only the training stage: a changed rate also reruns Adam's grid and tuned runs.
        exp = measure(
            dvc_command("exp", "run", ADAM, "-S", f"optimizers.adam.learning_rate={learning_rate}"),
            clone,
            log,
        )
        subprocess.run(["git", "checkout", "-q", "--", "params.yaml"], cwd=clone, check=True)
        images = plain_metrics["train_images"] * epochs
        rows.append(
            {
                "stage_seconds": stage.seconds,
                "plain_seconds": plain.seconds,
                "exp_run_seconds": exp.seconds,
                "stage_images_per_second": images / stage_metrics["seconds"]["fit"],
                "plain_images_per_second": images / plain_metrics["fit_seconds"],
                "stage_breakdown": stage_metrics["seconds"],
                "stage_max_rss_mib": stage.max_rss_mib,
                "plain_max_rss_mib": plain.max_rss_mib,
            }
        )
    return {"runs": rows}


def count_flops() -> dict:
    """Training and inference FLOPs per image of the pipeline's CNN, counted by TensorFlow's
    profiler on the graph of one step (forward, loss, gradients; optimizer update excluded)."""
    import keras
    import tensorflow as tf

    from mnist_optimizers.model import build_model, validate_model
    from mnist_optimizers.params import load_params

    model = build_model(validate_model(load_params(ROOT / "params.yaml")["model"]), (28, 28, 1))
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    @tf.function
    def forward(x):
        return model(x, training=False)

    def flops(function, *specs) -> int:
        graph = function.get_concrete_function(*specs).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops

    batch = 128
    image = tf.TensorSpec([batch, 28, 28, 1], tf.float32)
    train = flops(train_step, image, tf.TensorSpec([batch], tf.int64)) / batch
    return {
        "train_flops_per_image": train,
        "forward_flops_per_image": flops(forward, image) / batch,
    }


def achieved_flops(clone: Path, flops: dict) -> dict:
    """FLOP/s of train@adam's median float32 epoch: its training images forward and backward,
    its validation images forward."""
    counts = json.loads((clone / "data" / "processed" / "data.json").read_text())["counts"]
    seconds = statistics.median(epoch_seconds(clone, run_key("adam", SEED)))
    work = (
        counts["train"] * flops["train_flops_per_image"]
        + counts["val"] * flops["forward_flops_per_image"]
    )
    return {"median_epoch_seconds": seconds, "achieved_gflops": work / seconds / 1e9}


def bench_flops(clone: Path) -> dict:
    """FLOPs per image, and the FLOP/s of the clone's last float32 train@adam epochs."""
    counted = count_flops()
    return counted | achieved_flops(clone, counted)


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


def bench_precision(clone: Path, log: Path) -> dict:
    """Each optimizer's stage in float32 and in mixed_bfloat16, alternating; 5 epochs each."""
    rows = {}
    for name in OPTIMIZERS:
        row = {}
        for precision in ("float32", "mixed_bfloat16"):
            set_params(clone, train__precision=precision)
            measure([sys.executable, "-m", "stages.train", name, str(SEED)], clone, log)
            metrics = train_metrics(clone, run_key(name, SEED))
            row[precision] = {
                "precision_used": metrics["precision"],
                "epoch_seconds": epoch_seconds(clone, name),
                "val_accuracy": metrics["val_accuracy"],
            }
        rows[name] = row
    subprocess.run(["git", "checkout", "-q", "--", "params.yaml"], cwd=clone, check=True)
    return rows


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


# Thread settings, for one fit_probe process ("1 job") or two at once ("2 jobs"): "stage" is
# what mnist_optimizers.runtime sets from the cores and $PIPELINE_JOBS; "TensorFlow default" sets nothing
# (as many intra- and inter-op threads as cores, in each process).
THREAD_CONFIGS = {
    "1 job, stage setting": (1, ["--pipeline-threads"]),
    "1 job, stage setting but inter-op 2": (1, ["--pipeline-threads", "--inter", "2"]),
    "1 job, TensorFlow default": (1, []),
    "2 jobs, stage setting": (2, ["--pipeline-threads"]),
    "2 jobs, stage setting but inter-op 2": (2, ["--pipeline-threads", "--inter", "2"]),
    "2 jobs, TensorFlow default": (2, []),
}


def bench_threads(clone: Path, runs: int, log: Path) -> dict:
    """Training images per second (all processes together) under each thread setting,
    the settings alternating within each run."""
    rows: dict[str, list[dict]] = {name: [] for name in THREAD_CONFIGS}
    for _ in range(runs):
        for name, (jobs, flags) in THREAD_CONFIGS.items():
            outs = [clone / f"probe{i}.json" for i in range(jobs)]
            env = os.environ | {"PIPELINE_JOBS": str(jobs)}
            run_together([probe(out, *flags) for out in outs], clone, log, env)
            results = [json.loads(out.read_text()) for out in outs]
            rows[name].append(
                {
                    "images_per_second": sum(r["train_images"] for r in results)
                    / max(r["fit_seconds"] for r in results),
                    "intra_op": results[0]["intra_op"],
                    "inter_op": results[0]["inter_op"],
                }
            )
    return rows


def bench_input(clone: Path, runs: int, log: Path) -> dict:
    """Keras' own input path from NumPy arrays against a tf.data pipeline, alternating."""
    rows = []
    for _ in range(runs):
        row = {}
        for kind in ("arrays", "tf.data"):
            out = clone / "probe.json"
            measure(probe(out, "--pipeline-threads", "--input", kind), clone, log)
            result = json.loads(out.read_text())
            row[kind] = result["train_images"] / result["fit_seconds"]
        rows.append(row)
    return {"runs": rows}


def run_parallel(clone: Path, jobs: int, log: Path) -> None:
    """`python -m mnist_optimizers.parallel -j <jobs>`: the stale training stages through the experiment
    queue, ``jobs`` at a time, then `dvc repro`, which must take them from the run cache."""
    start = log.stat().st_size
    measure([sys.executable, "-m", "mnist_optimizers.parallel", "-j", str(jobs)], clone, log)
    with log.open() as text:
        text.seek(start)
        output = text.read()
    trained = [name for name in OPTIMIZERS if f"Running stage 'train@{name}-" in output]
    if trained:
        raise RuntimeError(f"dvc repro retrained {trained} instead of using the run cache")


def bench_parallel(clone: Path, runs: int, log: Path) -> dict:
    """The four optimizers and evaluate: `dvc repro` (one stage at a time, all cores each)
    against `python -m mnist_optimizers.parallel -j 2` (two at a time through the experiment queue),
    alternating. A new seed (`train.seeds`) each time, so that no training comes from the run
    cache; since issue 4 that is 8 trainings a run (default and tuned rates), the grids cached."""
    rows = []
    seed = 1000
    for _ in range(runs):
        row = {}
        for mode in ("sequential", "parallel"):
            seed += 1
            set_params(clone, train__seeds=[seed])
            start = time.perf_counter()
            if mode == "sequential":
                measure(dvc_command("repro"), clone, log)
            else:
                run_parallel(clone, 2, log)
            row[f"{mode}_seconds"] = time.perf_counter() - start
            metrics = {name: train_metrics(clone, run_key(name, seed)) for name in OPTIMIZERS}
            row[f"{mode}_threads"] = metrics["adam"]["threads"]
            row[f"{mode}_val_accuracy"] = {n: m["val_accuracy"] for n, m in metrics.items()}
        rows.append(row)
    subprocess.run(
        ["git", "checkout", "-q", "--", "params.yaml", "dvc.lock"], cwd=clone, check=True
    )
    return {"runs": rows}


def bench_runcache(clone: Path, runs: int, log: Path) -> dict:
    """`dvc exp run train@adam-42` back and forth between two learning rates, each trained
    once before: the stage comes from the run cache. Against the one `dvc exp run` that
    trained the new value, which is what every change cost before the training stages'
    outputs were cached. (Runs measured before issue 4 ran evaluate too.)"""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    values = (params["optimizers"]["adam"]["learning_rate"], 0.0021)

    def exp_run(value: float) -> tuple[float, bool]:
        start = log.stat().st_size
        seconds = measure(
            dvc_command("exp", "run", ADAM, "-S", f"optimizers.adam.learning_rate={value}"),
            clone,
            log,
        ).seconds
        with log.open() as text:
            text.seek(start)
            return seconds, f"Running stage '{ADAM}'" in text.read()

    trained_seconds, _ = exp_run(values[1])
    restored = []
    for _ in range(runs):
        for value in values:
            seconds, retrained = exp_run(value)
            if retrained:
                raise RuntimeError(f"learning rate {value} retrained train@adam: no run cache hit")
            restored.append(seconds)
    subprocess.run(
        ["git", "checkout", "-q", "--", "params.yaml", "dvc.lock"], cwd=clone, check=True
    )
    return {"trained_seconds": trained_seconds, "restored_seconds": restored}


# --------------------------------------------------------------------------- the report


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("tensorflow-cpu", "tensorflow", "keras", "mlflow", "dvc", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def report(results: dict) -> str:
    """BENCHMARKS.md from the results."""
    cpu = results["cpu"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks.run` on {results['date']}. Each figure: median "
        f"(min-max) of {results['runs']} runs; each ratio is taken within one A/B pair run "
        "back to back, then summarised.",
        "",
        "## Machine",
        "",
        f"- CPU: {cpu['model']} ({cpu['vendor']}, family {cpu['family']}), {cpu['cores']} cores "
        f"usable, {cpu['mhz']:.0f} MHz; flags: {', '.join(cpu['flags'])}",
        f"- Peak fp32: {cpu['peak_fp32_gflops']:.0f} GFLOP/s = {cpu['cores']} cores x "
        f"{cpu['mhz'] / 1000:.2f} GHz x {cpu['fp32_flop_per_cycle_per_core']} FLOP/cycle "
        "(FMA pipes x fp32 lanes x 2, from the CPU family; an estimate, not a measurement)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        "",
    ]
    if "pipeline" in results:
        rows = results["pipeline"]["runs"]

        def stats(key: str) -> dict:
            return summary([r[key] for r in rows])

        def ratio(a: str, b: str) -> dict:
            return summary([r[a] / r[b] for r in rows])

        lines += [
            "## Pipeline against plain Keras (train@adam, full MNIST, 5 epochs)",
            "",
            "| | pipeline stage (`dvc repro -f -s train@adam`) | plain script | ratio |",
            "|---|---|---|---|",
            f"| wall seconds | {fmt(stats('stage_seconds'), 1)} | {fmt(stats('plain_seconds'), 1)} "
            f"| {fmt(ratio('stage_seconds', 'plain_seconds'), 3)}x |",
            f"| training images/s | {fmt(stats('stage_images_per_second'), 0)} | "
            f"{fmt(stats('plain_images_per_second'), 0)} | "
            f"{fmt(ratio('stage_images_per_second', 'plain_images_per_second'), 3)}x |",
            f"| peak RSS, MiB | {fmt(stats('stage_max_rss_mib'), 0)} | "
            f"{fmt(stats('plain_max_rss_mib'), 0)} | |",
            "",
            "## Where the stage's time goes (train@adam)",
            "",
            "| part | seconds | share of the stage |",
            "|---|---|---|",
        ]
        parts = {
            key: [r["stage_breakdown"][key] for r in rows] for key in rows[0]["stage_breakdown"]
        }
        parts["DVC, interpreter and imports (the rest)"] = [
            r["stage_seconds"] - sum(r["stage_breakdown"].values()) for r in rows
        ]
        for key, values in parts.items():
            shares = [100 * v / r["stage_seconds"] for v, r in zip(values, rows, strict=True)]
            lines.append(f"| {key} | {fmt(summary(values), 2)} | {fmt(summary(shares), 2, '%')} |")
        lines += [
            "",
            "## One changed parameter",
            "",
            "`dvc exp run -S optimizers.adam.learning_rate=...` (retrains Adam, then evaluates) "
            "against the forced stage:",
            "",
            f"- exp run: {fmt(stats('exp_run_seconds'), 1)} s; ratio to the forced stage "
            f"{fmt(ratio('exp_run_seconds', 'stage_seconds'), 3)}x",
            "",
        ]
    if "noop" in results:
        noop = results["noop"]
        lines += [
            "## Nothing to do",
            "",
            f"- `dvc repro`, all up to date: {fmt(noop['dvc_repro'])} s",
            f"- `dvc status`: {fmt(noop['dvc_status'])} s",
            "",
        ]
    if "memory" in results:
        lines += ["## Peak resident memory per stage (forced, full MNIST)", ""]
        lines += [f"- {stage}: {mib:.0f} MiB" for stage, mib in results["memory"].items()]
        lines.append("")
    if "flops" in results:
        flops = results["flops"]
        lines += [
            "## How close to the hardware",
            "",
            f"- Training FLOPs per image (forward, loss, gradients; counted by TensorFlow's "
            f"profiler): {flops['train_flops_per_image'] / 1e6:.1f} M; forward only: "
            f"{flops['forward_flops_per_image'] / 1e6:.1f} M",
        ]
        if "achieved_gflops" in flops:
            lines += [
                f"- Achieved in a training epoch (train + validation pass, median epoch): "
                f"{flops['achieved_gflops']:.1f} GFLOP/s, "
                f"{100 * flops['achieved_gflops'] / cpu['peak_fp32_gflops']:.1f}% of the fp32 peak",
                "- The count is of direct convolution. oneDNN may run 3x3 convolutions with "
                "algorithms that need fewer multiplications (Winograd), and the cores may run "
                "above the nominal clock, so a figure near or above 100% is possible.",
            ]
        lines.append("")
    if "precision" in results:
        lines += [
            "## float32 against mixed_bfloat16 (5 epochs, full MNIST, each stage alone)",
            "",
            "| optimizer | float32 s/epoch | bf16 s/epoch | speed-up | float32 val acc % | "
            "bf16 val acc % | difference (points) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in results["precision"].items():
            f32, bf16 = row["float32"], row["mixed_bfloat16"]
            speedups = [
                a / b for a, b in zip(f32["epoch_seconds"], bf16["epoch_seconds"], strict=True)
            ]
            lines.append(
                f"| {name} | {fmt(summary(f32['epoch_seconds']), 1)} | "
                f"{fmt(summary(bf16['epoch_seconds']), 1)} | {fmt(summary(speedups), 2)}x | "
                f"{100 * f32['val_accuracy']:.2f} | {100 * bf16['val_accuracy']:.2f} | "
                f"{100 * (bf16['val_accuracy'] - f32['val_accuracy']):+.2f} |"
            )
        lines += [
            "",
            "Seconds per epoch: median (min-max) over the 5 epochs of one run; the speed-up is "
            "per epoch pair.",
            "",
        ]
    if "threads" in results:
        lines += report_threads(results["threads"])
    if "input" in results:
        rows = results["input"]["runs"]
        lines += [
            "## Input path (fit_probe: 1 epoch of 20,000 images, stage thread setting)",
            "",
            f"- NumPy arrays straight to `fit` (what the stage does): "
            f"{fmt(summary([r['arrays'] for r in rows]), 0)} images/s",
            f"- `tf.data` (from_tensor_slices, shuffle, batch, prefetch): "
            f"{fmt(summary([r['tf.data'] for r in rows]), 0)} images/s",
            f"- tf.data / arrays: {fmt(summary([r['tf.data'] / r['arrays'] for r in rows]), 3)}x",
            "",
        ]
    if "parallel" in results:
        lines += report_parallel(results["parallel"]["runs"])
    if "runcache" in results:
        runcache = results["runcache"]
        restored = summary(runcache["restored_seconds"])
        lines += [
            "## Back to a value trained before (run cache)",
            "",
            f"- `dvc exp run -S optimizers.adam.learning_rate=<new>`, training Adam, then "
            f"evaluate: {runcache['trained_seconds']:.1f} s (one run)",
            f"- back and forth between that value and the committed one, {len(runcache['restored_seconds'])} "
            f"times (Adam from the run cache, evaluate runs): {fmt(restored, 1)} s, "
            f"{restored['median'] / runcache['trained_seconds']:.3f}x the run that trained",
            "- Before the training stages' outputs were all cached, DVC kept no run cache for "
            "them, and going back cost as much as a new value.",
            "",
        ]
    return "\n".join(lines)


def report_threads(rows: dict[str, list[dict]]) -> list[str]:
    """The thread settings table: throughput and its ratio to the stage's setting."""
    lines = [
        "## Thread settings (fit_probe: 1 epoch of 20,000 images per process)",
        "",
        "Training images per second of all processes together; the ratio is to the stage's "
        "setting for the same number of jobs, within the same run (0 threads: TensorFlow's "
        "default, one per core).",
        "",
        "| setting | intra-op | inter-op | images/s | each run | ratio to the stage setting |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        reference = rows[f"{name.split(',')[0]}, stage setting"]
        each = ", ".join(f"{r['images_per_second']:.0f}" for r in runs)
        ratios = [
            r["images_per_second"] / b["images_per_second"]
            for r, b in zip(runs, reference, strict=True)
        ]
        lines.append(
            f"| {name} | {runs[0]['intra_op']} | {runs[0]['inter_op']} | "
            f"{fmt(summary([r['images_per_second'] for r in runs]), 0)} | "
            f"{each} | "
            f"{fmt(summary(ratios), 3)}x |"
        )
    lines += [
        "",
        "This machine runs in two speed phases (see the README); a setting measured in both "
        "shows two values in 'each run'. Compare settings within a run whose values share "
        "a phase.",
        "",
    ]
    return lines


def report_parallel(rows: list[dict]) -> list[str]:
    """One stage at a time against two at a time through the queue."""
    seq = [r["sequential_seconds"] for r in rows]
    par = [r["parallel_seconds"] for r in rows]
    ratios = [p / s for p, s in zip(par, seq, strict=True)]
    if min(ratios) < 1 < max(ratios):
        faster = "neither: the per-run ratios fall on both sides of 1"
    else:
        faster = "two at a time" if statistics.median(ratios) < 1 else "one at a time"
    threads = rows[0]["parallel_threads"]
    return [
        "## Parallel experiments (four optimizers + evaluate, full MNIST, 5 epochs)",
        "",
        "| | wall seconds |",
        "|---|---|",
        f"| one at a time, all cores each (`dvc repro`) | {fmt(summary(seq), 1)} |",
        f"| two at a time (the steps of `python -m mnist_optimizers.parallel -j 2`: `dvc exp run "
        f"--queue train@<name>` x4, `PIPELINE_JOBS=2 dvc queue start -j 2`, `dvc repro`), "
        f"{threads['intra_op']} intra-op thread each | {fmt(summary(par), 1)} |",
        f"| ratio, two at a time / one at a time | {fmt(summary(ratios), 3)}x |",
        "",
        f"Faster: {faster}. Each run trains with a new seed (`train.seeds`), so that nothing comes "
        "from the run cache; the final `dvc repro` of the queued way checks the four models "
        "out of the run cache and runs only evaluate.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite BENCHMARKS.md from results.json"
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
        (ROOT / "BENCHMARKS.md").write_text(report(results) + "\n")
        return
    parts = args.only.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")

    results_file = ROOT / "benchmarks" / "results.json"
    # A part run alone replaces that part and keeps the others' earlier results.
    results: dict = json.loads(results_file.read_text()) if results_file.exists() else {}
    results |= {
        "date": time.strftime("%Y-%m-%d"),
        "runs": args.runs,
        "cpu": cpu_info(),
        "versions": versions(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="mnist-bench-"))
    log = ROOT / "benchmarks" / "run.log"
    log.write_text("")
    try:
        clone = make_clone(workdir)
        steps = {
            "noop": lambda: bench_noop(clone, args.runs, log),
            "memory": lambda: bench_memory(clone, log),
            "flops": lambda: bench_flops(clone),
            "pipeline": lambda: bench_pipeline(clone, args.runs, log),
            "precision": lambda: bench_precision(clone, log),
            "threads": lambda: bench_threads(clone, args.runs, log),
            "input": lambda: bench_input(clone, args.runs, log),
            "parallel": lambda: bench_parallel(clone, args.runs, log),
            "runcache": lambda: bench_runcache(clone, args.runs, log),
        }
        for part in PARTS:  # this order: noop needs the clone as it was checked out
            if part in parts:
                print(f"benchmark: {part} ...", flush=True)
                results[part] = steps[part]()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "BENCHMARKS.md").write_text(report(results) + "\n")
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
