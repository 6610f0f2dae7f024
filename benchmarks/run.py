"""Benchmark the pipeline: against plain Keras, where a stage's time goes, no-op and one-param
reruns, memory, FLOP/s, float32 against mixed_bfloat16, and the
learning-rate search against a grid, and the parallel runner against `dvc repro`.

    python -m benchmarks.run                          # everything: about an hour on 2 cores
    python -m benchmarks.run --only noop,memory,flops # a part
    python -m benchmarks.run --runs 5

Needs a completed `dvc repro` (and MNIST_MIRROR where the public mirrors are out of reach).
It works in a temporary clone of the committed project that shares this project's DVC cache,
so the workspace, dvc.lock and mlflow.db are left as they are. Every figure is the median of
`--runs` runs with min and max; each comparison alternates A and B and takes the ratio of each
pair. Writes docs/benchmarks.md and benchmarks/results.json (every raw number).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.backends import bench_backend_accuracy
from benchmarks.harness import ROOT, cpu_info, make_clone, versions
from benchmarks.cluster import bench_cluster
from benchmarks.parts import (
    bench_backends,
    bench_flops,
    bench_input,
    bench_memory,
    bench_noop,
    bench_pipeline,
    bench_precision,
    bench_runcache,
    bench_search,
    bench_threads,
)
from benchmarks.report import report

PARTS = (
    "noop",
    "memory",
    "flops",
    "pipeline",
    "precision",
    "search",
    "threads",
    "input",
    "backends",
    "backend_accuracy",
    "runcache",
    "cluster",
)


def measured_on(date: str, cpu: dict) -> dict:
    """The day and CPU a part ran on (its peak, for the parts that compare with it)."""
    return {"date": date, "cpu": cpu["model"], "peak_fp32_gflops": cpu["peak_fp32_gflops"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite docs/benchmarks.md from results.json"
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
        (ROOT / "docs" / "benchmarks.md").write_text(report(results) + "\n")
        return
    parts = args.only.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")

    results_file = ROOT / "benchmarks" / "results.json"
    # A part run alone replaces that part and keeps the others' earlier results.
    results: dict = json.loads(results_file.read_text()) if results_file.exists() else {}
    # Which day and CPU measured each part: a part run alone keeps the others' record.
    measured = results.get("measured") or {
        part: measured_on(results["date"], results["cpu"]) for part in PARTS if part in results
    }
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
            "search": lambda: bench_search(clone, log),
            "threads": lambda: bench_threads(clone, args.runs, log),
            "input": lambda: bench_input(clone, args.runs, log),
            "backends": lambda: bench_backends(clone, args.runs, log),
            "backend_accuracy": lambda: bench_backend_accuracy(workdir, log),
            "runcache": lambda: bench_runcache(clone, args.runs, log),
            "cluster": lambda: bench_cluster(log),
        }
        for part in PARTS:  # this order: noop needs the clone as it was checked out
            if part in parts:
                print(f"benchmark: {part} ...", flush=True)
                results[part] = steps[part]()
                measured[part] = measured_on(results["date"], results["cpu"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["measured"] = measured
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "docs" / "benchmarks.md").write_text(report(results) + "\n")
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
