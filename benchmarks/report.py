"""BENCHMARKS.md from the raw numbers of benchmarks/results.json."""

from __future__ import annotations

import statistics

from benchmarks.harness import fmt, summary


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
    if "measured" in results:
        lines += [
            "Each part as last run (a part run alone keeps the others' numbers): "
            + "; ".join(
                f"{part} {m['date']} on {m['cpu']}" for part, m in results["measured"].items()
            )
            + ". The machine above is the last run's.",
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
                f"{100 * flops['achieved_gflops'] / peak_of(results, 'flops'):.1f}% of the fp32 peak of the CPU it ran on",
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
    if "search" in results:
        lines += report_search(results["search"])
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
    if "cluster" in results:
        lines += report_cluster(results["cluster"])
    return "\n".join(lines)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def report_cluster(run: dict) -> list[str]:
    """The Ray runner against `dvc repro`, its cost per task, and the projection."""
    measured = run["measured"]
    seq = run["sequential_seconds"]
    lines = [
        "## Many machines (Ray cluster runner, full MNIST)",
        "",
        "`python -m mnist_optimizers.parallel --ray -S " + " -S ".join(run["stages"]) + "` on a "
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


def peak_of(results: dict, part: str) -> float:
    """The fp32 peak of the CPU that ran ``part`` (the last run's CPU if not recorded)."""
    return (
        results.get("measured", {})
        .get(part, {})
        .get("peak_fp32_gflops", results["cpu"]["peak_fp32_gflops"])
    )
