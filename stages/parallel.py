"""`dvc repro` with the training stages run N at a time through DVC's experiment queue.

    python -m stages.parallel          # two at a time
    python -m stages.parallel -j 3

Not a stage: a runner for them. On this project's 2-core machine it is no faster than
`dvc repro`, which runs one stage at a time on all cores: 0.99x its wall time, 0.955x to 1.032x
over three alternating runs (BENCHMARKS.md, "Parallel experiments"), so `dvc repro` stays the
way the README gives. It runs the steps DVC documents:

1. `dvc repro preprocess`: the stages upstream of training, once, here;
2. `dvc exp run --queue <stage>` for each stale stage of the first round (`train@`, `tune@`,
   `gd_variants`: independent of each other);
3. `PIPELINE_JOBS=N dvc queue start -j N`, so that each stage sizes TensorFlow's threads to
   its share of the cores (stages/runtime.py), then waits for the queued runs;
4. `dvc repro --single-item <those stages>`: it checks their outputs out of DVC's run cache,
   where the queued runs left them;
5. steps 2-4 again for the second round, `train_tuned@` (each needs its optimizer's grid);
6. `dvc repro`: evaluate and report.

Models trained this way can differ from `dvc repro`'s in the last bits of their weights: the
thread count changes how oneDNN splits its sums (stages/runtime.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

from stages.common import PipelineError, run_stage

log = logging.getLogger(__name__)
# Stages queued together: each round needs only what the rounds before it made.
ROUNDS = (("train@", "tune@", "gd_variants"), ("train_tuned@",))
POLL_SECONDS = 5.0


def dvc(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a dvc command; its output, or a PipelineError with it."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def stale_stages(status_json: str, prefixes: Sequence[str]) -> list[str]:
    """The stages named by ``prefixes`` that `dvc status --json` lists as changed, in
    pipeline order."""
    return [name for name in json.loads(status_json or "{}") if name.startswith(tuple(prefixes))]


def queued_task(output: str) -> str:
    """The experiment in `dvc exp run --queue`'s "Queued experiment 'irony-nowt' ..." line."""
    match = re.search(r"Queued experiment '([^']+)'", output)
    if not match:
        raise PipelineError(f"dvc exp run --queue named no experiment:\n{output}")
    return match.group(1)


def task_states(status_output: str, tasks: Sequence[str]) -> dict[str, str]:
    """The Status column of `dvc queue status` for each of ``tasks`` (experiment names, or
    task ids) it lists: the first two columns are the task id and the name."""
    states = {}
    for line in status_output.splitlines():
        words = line.split()
        for task in tasks:
            if task in words[:2]:
                states[task] = words[-1]
    return states


def wait_for(tasks: Sequence[str]) -> dict[str, str]:
    """Poll `dvc queue status` until none of ``tasks`` is queued or running."""
    while True:
        states = task_states(dvc("queue", "status"), tasks)
        missing = [task for task in tasks if task not in states]
        if missing:
            raise PipelineError(f"dvc queue status does not list {', '.join(missing)}")
        if not {"Queued", "Running"} & set(states.values()):
            return states
        time.sleep(POLL_SECONDS)


def run_round(stages: Sequence[str], jobs: int) -> None:
    """Train ``stages`` through the queue, ``jobs`` at a time, and take their outputs from
    the run cache into the workspace."""
    tasks = [queued_task(dvc("exp", "run", "--queue", stage)) for stage in stages]
    log.info("queued %s; starting %d workers", ", ".join(stages), jobs)
    dvc("queue", "start", "-j", str(jobs), env=os.environ | {"PIPELINE_JOBS": str(jobs)})
    states = wait_for(tasks)
    failed = [task for task, state in states.items() if state != "Success"]
    if failed:
        logs = "\n".join(dvc("queue", "logs", task) for task in failed)
        raise PipelineError(f"queued runs {', '.join(failed)} did not succeed:\n{logs}")
    dvc("repro", "--single-item", *stages)


def run_parallel(jobs: int) -> list[str]:
    """Train every stale training stage ``jobs`` at a time, round by round, then `dvc repro`;
    return the stages trained in the queue."""
    if jobs < 1:
        raise PipelineError(f"-j: expected a positive number of jobs, got {jobs}")
    status = dvc("queue", "status")
    if re.search(r"\b(Queued|Running)\s*$", status, re.M):
        raise PipelineError(
            "the experiment queue already holds queued or running tasks; wait for them or "
            "clear it (dvc queue status, dvc queue remove --queued)"
        )
    log.info("stages upstream of training, once: dvc repro preprocess")
    dvc("repro", "preprocess")
    trained: list[str] = []
    for prefixes in ROUNDS:
        stages = stale_stages(dvc("status", "--json"), prefixes)
        if stages:
            run_round(stages, jobs)
            trained += stages
    log.info("dvc repro: evaluate and report")
    print(dvc("repro"), end="")
    return trained


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.parallel", description=__doc__)
    parser.add_argument("-j", "--jobs", type=int, default=2, help="stages at a time (2)")
    run_parallel(parser.parse_args(argv).jobs)


if __name__ == "__main__":
    run_stage(main)
