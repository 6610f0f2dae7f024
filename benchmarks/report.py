"""docs/benchmarks.md from the raw numbers of benchmarks/results.json."""

from __future__ import annotations

import statistics

from benchmarks.harness import fmt, summary


def report(results: dict) -> str:
    """docs/benchmarks.md from the results: each part under its heading, with the date and CPU
    it was measured on."""
    cpu = results["cpu"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks.run` on {results['date']}. Each figure: median "
        f"(min-max) of {results['runs']} runs; each ratio is taken within one A/B pair run "
        "back to back, then summarised. Each part says the day and CPU it was measured on.",
        "",
        "## The last run's machine",
        "",
        f"- CPU: {cpu['model']} ({cpu['vendor']}, family {cpu['family']}), {cpu['cores']} cores "
        f"usable, {cpu['mhz']:.0f} MHz; flags: {', '.join(cpu['flags'])}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        "",
    ]
    measured = results.get("measured", {})
    for name, writer in PARTS.items():
        if name not in results:
            continue
        part = writer(results)
        if name in measured and part and part[0].startswith("## "):
            part[1:1] = ["", f"Measured {measured[name]['date']} on {measured[name]['cpu']}."]
        lines += part
    return "\n".join(lines)


def part_pipeline(results: dict) -> list[str]:
    lines: list[str] = []
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
    return lines


def part_noop(results: dict) -> list[str]:
    lines: list[str] = []
    noop = results["noop"]
    lines += [
        "## Nothing to do",
        "",
        f"- `dvc repro`, all up to date: {fmt(noop['dvc_repro'])} s",
        f"- `dvc status`: {fmt(noop['dvc_status'])} s",
        "",
    ]
    return lines


def part_memory(results: dict) -> list[str]:
    lines: list[str] = []
    lines += ["## Peak resident memory per stage (forced, full MNIST)", ""]
    lines += [f"- {stage}: {mib:.0f} MiB" for stage, mib in results["memory"].items()]
    lines.append("")
    return lines


def part_flops(results: dict) -> list[str]:
    lines: list[str] = []
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
            f"{flops['achieved_gflops']:.1f} GFLOP/s (the count is of direct convolution; "
            "oneDNN may run 3x3 convolutions with fewer multiplications)",
        ]
    lines.append("")
    return lines


def part_precision(results: dict) -> list[str]:
    lines: list[str] = []
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
    return lines


def part_search(results: dict) -> list[str]:
    lines: list[str] = []
    lines += report_search(results["search"])
    return lines


def part_threads(results: dict) -> list[str]:
    lines: list[str] = []
    lines += report_threads(results["threads"])
    return lines


def part_input(results: dict) -> list[str]:
    lines: list[str] = []
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
    return lines


def part_runcache(results: dict) -> list[str]:
    lines: list[str] = []
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
    return lines


def part_cluster(results: dict) -> list[str]:
    lines: list[str] = []
    lines += report_cluster(results["cluster"])
    return lines


def part_backends(results: dict) -> list[str]:
    """TensorFlow against JAX: seconds per epoch in each precision, and their ratio."""
    part = results["backends"]
    lines = [
        f"## TensorFlow against JAX (the CNN, epochs of {part['images_per_epoch']:,} images)",
        "",
        "`python -m benchmarks.fit_probe --backend ... --precision ...`, the backends "
        "alternating (which goes first swaps each run), each in its own process with the "
        "stage's threads. The first epoch includes compiling the training step; the second is "
        f"the steady state. Each epoch also validates on {part['val_images']:,} images.",
        "",
        "| precision | epoch | TensorFlow s | JAX s | JAX / TensorFlow |",
        "|---|---|---|---|---|",
    ]
    for precision in ("float32", "mixed_bfloat16"):
        rows = [row for row in part["runs"] if row["precision"] == precision]
        for epoch, label in ((0, "first"), (1, "second")):
            tf_s = [row["tensorflow"][epoch] for row in rows]
            jax_s = [row["jax"][epoch] for row in rows]
            ratios = [j / t for j, t in zip(jax_s, tf_s, strict=True)]
            lines.append(
                f"| {precision} | {label} | {fmt(summary(tf_s), 1)} | {fmt(summary(jax_s), 1)} | "
                f"{fmt(summary(ratios), 2)}x |"
            )
    lines.append("")
    return lines


def part_backend_accuracy(results: dict) -> list[str]:
    """The four optimizers' test accuracy on each backend, Welch and Holm per optimizer."""
    from benchmarks.backends import compare

    part = results["backend_accuracy"]
    lines = [
        f"## TensorFlow against JAX: test accuracy (the CNN, the first {part['subset']:,} "
        "training and test images, float32, 5 epochs)",
        "",
        "`python -m benchmarks.run --only backend_accuracy`: each backend's `dvc repro` of the "
        "training stages in its own clone (`-S train.backend=...`), the test accuracy of each "
        "saved model measured on its own backend. Mean over the seeds; Welch's t-test per "
        "optimizer, Holm-corrected over the four.",
        "",
        "| optimizer | TensorFlow % | JAX % | JAX - TensorFlow (points) | p | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for row in compare(part):
        tf_mean = sum(row["tensorflow"]) / len(row["tensorflow"])
        jax_mean = sum(row["jax"]) / len(row["jax"])
        lines.append(
            f"| {row['optimizer']} | {tf_mean:.2f} | {jax_mean:.2f} | {row['difference']:+.2f} "
            f"| {row['p']:.3f} | {row['p_holm']:.3f} |"
        )
    lines.append("")  # the speed: the part above (these stages shared the machine with others)
    return lines


PARTS = {
    "pipeline": part_pipeline, "noop": part_noop, "memory": part_memory, "flops": part_flops,
    "precision": part_precision, "search": part_search, "threads": part_threads,
    "input": part_input, "backends": part_backends,
    "backend_accuracy": part_backend_accuracy, "runcache": part_runcache,
    "cluster": part_cluster,
}  # fmt: skip


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def report_cluster(run: dict) -> list[str]:
    """The Ray runner against `dvc repro`, its cost per task, and the projection."""
    measured = run["measured"]
    seq = run["sequential_seconds"]
    lines = [
        "## Many machines (Ray cluster runner, full MNIST)",
        "",
        "`python -m mnist_optimizers.parallel -S " + " -S ".join(run["stages"]) + "` on a "
        "two-node Ray cluster on this machine (two `ray start` processes, 1 CPU each, so 1 "
        "TensorFlow thread per task), against `dvc repro` of the same params in a fresh clone, "
        "one after the other in one run (one run each):",
        "",
        "| | seconds | runner / it |",
        "|---|---:|---:|",
        f"| runner, 2 nodes x 1 CPU | {run['runner_seconds']:.0f} | |",
        f"| `dvc repro` (2 threads, the default here) | {seq['dvc_repro']:.0f} | "
        f"{run['ratio']:.2f}x |",
        f"| `dvc repro` with 1 thread | {seq['dvc_repro_1_thread']:.0f} | "
        f"{run['ratio_1_thread']:.2f}x |",
        "",
        "Each task (stage: seconds waited for a CPU, cloning, `dvc repro --pull`, `dvc push`):",
        "",
        "| stage | ran | waited | clone | repro | push | total |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in run["tasks"]:
        lines.append(
            f"| {t['stage']} | {'yes' if t['ran'] else 'restored'} | {t.get('waited', 0):.1f} | "
            f"{t['clone']:.1f} | {t['repro']:.1f} | {t['push']:.1f} | {t['total']:.1f} |"
        )
    restored = run["restored_tasks"]
    lines += [
        "",
        f"**The cluster's cost per task**: the runner again with every stage in the run cache "
        f"({run['restore_runner_seconds']:.0f} s in all): each task clones, pulls the inputs "
        "and the stage's outputs, checks them out and pushes, training nothing. Median "
        f"{measured['overhead_seconds']:.1f} s a task (clone "
        f"{statistics.median(t['clone'] for t in restored):.1f}, repro "
        f"{statistics.median(t['repro'] for t in restored):.1f}, push "
        f"{statistics.median(t['push'] for t in restored):.1f}); Ray's start (submitted to "
        f"running, a CPU free): {measured['start_seconds']:.2f} s.",
        "",
        "**Same results**: the runner's dvc.lock (commands, params, inputs) "
        + ("equals" if run["lock_equal"] else "DIFFERS from")
        + f" the 1-thread `dvc repro`'s; of its {len(run['outputs_compared'])} metrics, "
        "histories and models, "
        + (
            "all are equal (weights bit for bit; times and run ids left out)."
            if not run["outputs_differing"]
            else "these differ: " + ", ".join(run["outputs_differing"])
        ),
        "",
        "**Projection**: the full comparison, 15 optimizers x 5 seeds at both settings (75 "
        "trainings, 15 searches, then 75 tuned trainings), on machines like this one. "
        f"Assumed: each machine runs 2 tasks of 1 CPU at once; a training task takes "
        f"{measured['task_seconds']['train']:.0f} s and a search task "
        f"{measured['task_seconds']['tune']:.0f} s (this run's medians of whole tasks: clone, "
        "pull, train, push; 1 thread, 2 tasks on 2 cores), every tuned training trains (none "
        "reuses its default run); each round's tasks go longest first to the "
        "next free CPU; the DVC remote and tracking server keep up (here a local folder and one "
        "server: on a network, each machine also downloads the inputs once, 220 MB: data/raw "
        "and data/processed); "
        f"the driver's own part is this run's ({measured['driver_fixed_seconds']:.0f} s: "
        f"inputs, Ray, evaluate, report, register) plus "
        f"{measured['restore_seconds_per_stage']:.1f} s per stage restored, and evaluate's "
        "time for 150 models instead of 4 is not in it.",
        "",
        "| machines | on the cluster | the driver | expected wall time |",
        "|---:|---:|---:|---:|",
    ]
    for row in run["projection"]:
        lines.append(
            f"| {row['machines']} | {minutes(row['cluster_seconds'])} | "
            f"{minutes(row['driver_seconds'])} | {minutes(row['total_seconds'])} |"
        )
    lines.append("")
    return lines


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


def report_search(rows: dict) -> list[str]:
    """Each search against the first (the 5-point grid it replaced), per optimizer and in
    total: seconds, their ratio, the epochs trained and the rate picked."""
    labels = list(next(iter(rows.values())))
    lines = [
        "## Learning-rate search: 9 points with successive halving against the 5-point grid",
        "",
        "Each optimizer's `tune` stage run once each way, one after the other, on the same "
        "budget (10,000 training images, up to 2 epochs a trial, full validation split). The "
        "ratio is to the first row of the same optimizer; the unpruned 9 points give the rate "
        "the pruned search should find.",
        "",
        "| optimizer | search | seconds | ratio | epochs trained | trials pruned | rate picked |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = dict.fromkeys(labels, 0.0)
    for name, row in rows.items():
        base = row[labels[0]]["seconds"]
        for label in labels:
            run = row[label]
            totals[label] += run["seconds"]
            lines.append(
                f"| {name} | {label} | {run['seconds']:.0f} | {run['seconds'] / base:.2f}x | "
                f"{run['epochs_trained']:g} | {run['pruned']} of {run['trials']} | "
                f"{run['best_learning_rate']:g} |"
            )
    for label in labels:
        lines.append(
            f"| all four | {label} | {totals[label]:.0f} | "
            f"{totals[label] / totals[labels[0]]:.2f}x | | | |"
        )
    lines += [
        "",
        "Seconds: the whole stage process (imports and MLflow included). Precision: "
        f"{next(iter(rows.values()))[labels[1]]['precision']}.",
        "",
    ]
    return lines
