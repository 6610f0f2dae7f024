"""The benchmark parts, one function each (`python -m benchmarks.run --only <part>`); each
returns the raw numbers that benchmarks/report.py writes up."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


from benchmarks.harness import (
    ADAM,
    OPTIMIZERS,
    ROOT,
    SEED,
    WORKLOAD,
    dvc,
    dvc_command,
    epoch_seconds,
    measure,
    probe,
    run_together,
    set_params,
    summary,
    train_metrics,
)
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import run_key


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
    stages = [f"download@{WORKLOAD}", f"preprocess@{WORKLOAD}", ADAM, f"evaluate@{WORKLOAD}"]
    return {
        stage: measure(dvc_command("repro", "-f", "-s", stage), clone, log).max_rss_mib
        for stage in stages
    }


def bench_pipeline(clone: Path, runs: int, log: Path) -> dict:
    """A forced train@adam stage against the tutorial's plain script, alternating, and one
    changed learning rate through `dvc exp run` against the forced stage."""
    epochs = load_params(clone / "params.yaml")["train"]["epochs"]
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

    from mnist_optimizers.architecture import validate_model
    from mnist_optimizers.model import build_model

    config = validate_model(load_params(ROOT / "params.yaml")["workloads"][WORKLOAD]["model"])
    model = build_model(config, (28, 28, 1))
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
    summary = clone / "data" / "processed" / WORKLOAD / "data.json"
    counts = json.loads(summary.read_text())["counts"]
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


# The learning-rate search against the grid it replaced, with its first rung after one epoch
# and after half an epoch (reduction factor 3, and 4: the default, Optuna's and Ray Tune's),
# and the same 9 points with every trial trained to the end (the rate the pruning should
# find): (label, tune params).
SEARCHES = (
    ("5-point grid, unpruned (before)", {"points": 5, "prune": False}),
    ("9 points, first rung at 1 epoch", {"points": 9, "prune": True, "min_epochs": 1}),
    ("9 points, first rung at 0.5 epoch", {"points": 9, "prune": True, "min_epochs": 0.5}),
    (
        "9 points, first rung at 0.5 epoch, reduction factor 4",
        {"points": 9, "prune": True, "min_epochs": 0.5, "reduction_factor": 4},
    ),
    ("9-point grid, unpruned", {"points": 9, "prune": False}),
)
SEARCH_DEFAULTS = {"min_epochs": 1, "reduction_factor": 3}  # what a row does not set


def bench_search(clone: Path, log: Path) -> dict:
    """Each optimizer's tune stage with each of SEARCHES in turn, on the same budget (the
    clone's tune.images and tune.epochs)."""
    rows = {}
    for name in OPTIMIZERS:
        row = {}
        for label, tune in SEARCHES:
            settings = SEARCH_DEFAULTS | tune
            set_params(clone, **{f"tune__{key}": value for key, value in settings.items()})
            measured = measure([sys.executable, "-m", "stages.tune", name], clone, log)
            result = json.loads((clone / "metrics" / "tune" / f"{name}.json").read_text())
            row[label] = {
                "seconds": measured.seconds,
                "fit_seconds": result["seconds"],
                "epochs_trained": result["epochs_trained"],
                "trials": len(result["trials"]),
                "pruned": sum(t["pruned"] for t in result["trials"]),
                "best_learning_rate": result["best_learning_rate"],
                "precision": result["precision"],
            }
        rows[name] = row
    subprocess.run(["git", "checkout", "-q", "--", "params.yaml"], cwd=clone, check=True)
    return rows


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


# The probes of part `backends`: fewer images per epoch than the other probes, since JAX's
# CPU epochs and bfloat16 ones on a CPU without BF16 instructions take several times as long.
BACKEND_IMAGES, BACKEND_VAL_IMAGES = 4000, 1000
BACKEND_PROBE = ["--pipeline-threads", "--images", str(BACKEND_IMAGES),
                 "--val-images", str(BACKEND_VAL_IMAGES), "--epochs", "2"]  # fmt: skip


def bench_backends(clone: Path, runs: int, log: Path) -> dict:
    """Seconds per epoch of the CNN on TensorFlow and on JAX, in float32 and mixed_bfloat16,
    the backends alternating (which goes first swaps each run); 2 epochs each, the first
    with the compilation of the step."""
    rows: list[dict] = []
    for run in range(runs):
        for precision in ("float32", "mixed_bfloat16"):
            order = ("tensorflow", "jax") if run % 2 == 0 else ("jax", "tensorflow")
            row: dict = {"precision": precision}
            for backend in order:
                out = clone / "probe.json"
                flags = [*BACKEND_PROBE, "--backend", backend, "--precision", precision]
                # A later --images wins: the backends' probes are smaller than PROBE_IMAGES.
                measure(probe(out, *flags), clone, log)
                row[backend] = json.loads(out.read_text())["epoch_seconds"]
            rows.append(row)
    return {"runs": rows, "images_per_epoch": BACKEND_IMAGES, "val_images": BACKEND_VAL_IMAGES}


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


def bench_runcache(clone: Path, runs: int, log: Path) -> dict:
    """`dvc exp run train@adam-42` back and forth between two learning rates, each trained
    once before: the stage comes from the run cache. Against the one `dvc exp run` that
    trained the new value, which is what every change cost before the training stages'
    outputs were cached. (Runs measured before issue 4 ran evaluate too.)"""
    params = load_params(clone / "params.yaml")
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
