"""`dvc repro` with the training stages run N at a time through DVC's experiment queue.

    python -m mnist_optimizers.parallel          # two at a time
    python -m mnist_optimizers.parallel -j 3 --task-timeout 3600
    python -m mnist_optimizers.parallel --ray    # on a Ray cluster: mnist_optimizers/cluster.py

Not a stage: a runner for them. On this project's 2-core machine it is no faster than
`dvc repro`, which runs one stage at a time on all cores: 0.99x its wall time, 0.955x to 1.032x
over three alternating runs (BENCHMARKS.md, "Parallel experiments"), so `dvc repro` stays the
way the README gives. It runs the steps DVC documents:

1. `dvc repro preprocess`: the stages upstream of training, once, here;
2. `dvc exp run --queue <stage>` for each stale stage of the first round (`train@`, `tune@`,
   `gd_variants`: independent of each other);
3. `PIPELINE_JOBS=N dvc queue start -j N`, so that each stage sizes TensorFlow's threads to
   its share of the cores (mnist_optimizers/runtime.py); then it watches its own tasks' states, with a
   deadline, and stops the workers it started once they are done (below);
4. `dvc repro --single-item <those stages>`: it checks their outputs out of DVC's run cache,
   where the queued runs left them;
5. steps 2-4 again for the second round, `train_tuned@` (each needs its optimizer's grid);
6. `dvc repro`: evaluate and report.

How DVC's queue (3.67, dvc-task 0.40) shuts its workers down, and why this runner does not
rely on it:
- `dvc queue start` forks one daemon per worker (dvc_task ManagedProcess.spawn), which runs
  `dvc exp queue-worker` and waits for it. The fork keeps the parent's stdout and stderr, so a
  caller that reads `dvc queue start`'s output through a pipe waits until every worker has
  exited. The runner sends that output to a file and returns as soon as the command does.
- A worker exits when its monitor thread, every 10 s, finds nothing queued and asks it to shut
  down through a control message in the broker's folder. That message can be lost: a worker
  finished its task and never exited, its shutdown message left unread in the broker
  (this project's CI; dvc #10427, #10562), and the monitor can also stop a worker early
  (dvc-task #77). So the runner treats a worker as done when its own tasks are, gives the
  workers WORKER_EXIT_SECONDS to exit by themselves, then stops the rest by their process
  group (the pid files in `.dvc/tmp/exps/celery/`), with a warning: not a failure of the run.
  It does not use `dvc queue stop`: that is the same control message, and one no worker reads
  stays in the broker, where it can stop the next round's workers at their start.
- Queued tasks with no live worker (it stopped early, or read a stale message) get the
  workers started again, up to MAX_WORKER_STARTS times a round. A task still running after
  ``--task-timeout`` seconds, or whose worker died, fails the run with its name and log.
Whatever happens, including Ctrl-C, no worker the runner started is left running.

Models trained this way can differ from `dvc repro`'s in the last bits of their weights: the
thread count changes how oneDNN splits its sums (mnist_optimizers/runtime.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import PipelineError

log = logging.getLogger(__name__)
# Stages queued together: each round needs only what the rounds before it made.
ROUNDS = (("train@", "tune@", "gd_variants"), ("train_tuned@",))
POLL_SECONDS = 5.0
# Where DVC's queue keeps its broker, its workers' logs (`<name>.out`) and pid files.
QUEUE_DIR = Path(".dvc", "tmp", "exps", "celery")
# A worker's monitor looks for queued tasks every 10 s; one that is idle longer is stuck.
WORKER_EXIT_SECONDS = 20.0
# From SIGTERM (Celery's warm shutdown) to SIGKILL.
KILL_AFTER_SECONDS = 10.0
# How long `dvc queue start` may take to write its workers' pid files.
WORKER_START_SECONDS = 30.0
# Tasks queued, none running, workers alive: after this long the workers are started again.
IDLE_RESTART_SECONDS = 60.0
MAX_WORKER_STARTS = 3
# `dvc queue status` lists the running tasks, then the queued ones (dvc 3.67,
# repo/experiments/queue/base.py): a task a worker takes between the two listings is in
# neither. A task missing for longer than this is an error.
MISSING_SECONDS = 60.0
# `dvc queue status` reads each task's info file while a worker may be writing it, and then
# fails with DVC's catch-all "unexpected error - Expecting value: line 1 column 1 (char 0)"
# (an empty file read as JSON; seen in CI; cf. treeverse/dvc#8014). Such a failure is read
# again, up to this many times in a row.
STATUS_RETRIES = 5
# A bound for the short queue commands (status, start, kill, logs, exp run --queue).
COMMAND_TIMEOUT_SECONDS = 300.0
DEFAULT_TASK_TIMEOUT_SECONDS = 7200.0
FINAL_STATES = frozenset({"Success", "Failed"})
PROC = Path("/proc")


def command(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    name: str | None = None,
) -> str:
    """Run ``argv`` (``name`` in messages); its output, or a PipelineError with it. Output
    goes through files, not pipes: a daemon the command leaves behind (a queue worker) keeps
    them open, and reading a pipe to its end would wait for that daemon to exit."""
    name = name or " ".join(argv)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=cwd, env=None if env is None else dict(env), timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise PipelineError(f"{name} did not finish within {timeout:.0f} s (killed)") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    if result.returncode != 0:
        raise PipelineError(f"{name} failed:\n{stdout}{stderr}")
    return stdout


def dvc(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run a dvc command (this Python's DVC); its output, or a PipelineError with it."""
    argv = [sys.executable, "-m", "dvc", *args]
    return command(argv, cwd, env, timeout, name=f"dvc {' '.join(args)}")


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


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and process group of ``pid`` from /proc; None if it is gone."""
    try:  # the fields after the command name, which may hold spaces and parentheses
        fields = (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def group_members(group: int) -> list[int]:
    """The live (not zombie) processes of process group ``group``."""
    if not PROC.is_dir():  # no /proc: whether the group has any process at all
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [group]
    members = []
    for entry in PROC.glob("[0-9]*"):
        stat = proc_stat(int(entry.name))
        if stat and stat[2] == group and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class Worker:
    """A queue worker process: `dvc exp queue-worker`, named like its pid file, and its
    process group (dvc-task gives each worker one of its own: the worker, the daemon that
    waits for it, and the experiment it runs)."""

    name: str
    pid: int
    group: int

    def alive(self) -> bool:
        """Whether the process still runs a queue worker (a reused pid does not count)."""
        if not PROC.is_dir():  # no /proc: the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        stat = proc_stat(self.pid)
        try:
            cmdline = (PROC / str(self.pid) / "cmdline").read_bytes()
        except OSError:
            return False
        if stat is None or stat[0] in ("Z", "X") or stat[1] in (0, 2):  # exited; kernel thread
            return False
        return not cmdline or b"queue-worker" in cmdline  # empty while it starts (exec)

    def own_group(self) -> bool:
        """Whether the worker's group is its own: never ours, nor init's."""
        return self.group > 1 and self.group != os.getpgrp()

    def running(self) -> bool:
        """Whether anything of the worker's group still runs."""
        return bool(group_members(self.group)) if self.own_group() else self.alive()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's group (or to the worker alone, if its group is not
        its own)."""
        try:
            if self.own_group():
                os.killpg(self.group, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass


def read_workers(queue_dir: Path, since: float = 0.0) -> list[Worker]:
    """The workers whose pid files in ``queue_dir`` were written at or after ``since``."""
    workers = []
    for pidfile in sorted(queue_dir.glob("dvc-exp-worker-*.pid")):
        try:
            if pidfile.stat().st_mtime >= since:
                pid = int(pidfile.read_text().strip())
                stat = proc_stat(pid)  # no /proc: ask the OS
                group = stat[2] if stat else (os.getpgid(pid) if not PROC.is_dir() else 0)
                workers.append(Worker(pidfile.stem, pid, group))
        except (OSError, ValueError):  # being written, or gone
            continue
    return workers


def live_workers(queue_dir: Path) -> list[Worker]:
    """Every queue worker with a pid file in ``queue_dir`` that is alive, whoever started it."""
    return [w for w in read_workers(queue_dir) if w.alive()]


def stop_workers(workers: Sequence[Worker], grace: float) -> list[Worker]:
    """Give ``workers`` ``grace`` seconds to exit by themselves, then stop the rest, each
    with its whole process group (SIGTERM, then SIGKILL); return the ones that had to be
    stopped."""
    deadline = time.monotonic() + grace
    while any(w.alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    stuck = [w for w in workers if w.alive()]
    for sig, wait in ((signal.SIGTERM, KILL_AFTER_SECONDS), (signal.SIGKILL, 5.0)):
        for worker in stuck:
            if worker.running():
                worker.signal(sig)
        deadline = time.monotonic() + wait
        while any(w.running() for w in stuck) and time.monotonic() < deadline:
            time.sleep(0.2)
    return stuck


@dataclass
class QueueRun:
    """Run queued experiments on DVC's workers, ``jobs`` at a time, in the repo at ``root``,
    and leave none of the workers it started running."""

    root: Path
    jobs: int
    task_timeout: float = DEFAULT_TASK_TIMEOUT_SECONDS
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    worker_grace: float = WORKER_EXIT_SECONDS
    poll: float = POLL_SECONDS
    started: list[Worker] = field(default_factory=list)
    starts: int = 0

    def dvc(self, *args: str, timeout: float | None = COMMAND_TIMEOUT_SECONDS) -> str:
        return dvc(*args, cwd=self.root, env=self.env, timeout=timeout)

    @property
    def queue_dir(self) -> Path:
        return self.root / QUEUE_DIR

    def start_workers(self) -> None:
        """`dvc queue start -j N`, without waiting for the workers; note the ones it started."""
        if self.starts >= MAX_WORKER_STARTS:
            raise PipelineError(
                f"the queue's workers stopped {self.starts} times with tasks still queued; "
                f"their logs: {self.queue_dir}/dvc-exp-worker-*.out"
            )
        self.starts += 1
        since = time.time() - 1.0  # pid files' mtimes may lag the clock a little
        output = self.dvc("queue", "start", "-j", str(self.jobs))
        match = re.search(r"Started '(\d+)'", output)
        expected = int(match.group(1)) if match else self.jobs
        known = {w.pid for w in self.started}
        deadline = time.monotonic() + WORKER_START_SECONDS
        while True:  # each daemon writes its worker's pid file once it has started it
            fresh = [w for w in read_workers(self.queue_dir, since) if w.pid not in known]
            if len(fresh) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.started += fresh
        log.info(
            "started %d queue workers: %s",
            len(fresh), ", ".join(f"{w.name} (pid {w.pid})" for w in fresh) or "none",
        )  # fmt: skip

    def stop(self, grace: float) -> None:
        """Stop the workers this run started; warn about any that had not exited by itself
        ``grace`` seconds after its tasks were done."""
        stuck = stop_workers(self.started, grace)
        if stuck and grace > 0:
            log.warning(
                "queue worker %s still ran %.0f s after its tasks were done (DVC's queue missed "
                "its shutdown); stopped it. The results are complete.",
                ", ".join(f"{w.name} (pid {w.pid})" for w in stuck), grace,
            )  # fmt: skip
        self.started = [w for w in self.started if w.alive()]

    def fail(self, tasks: Sequence[str], stages: Mapping[str, str], why: str) -> PipelineError:
        """A PipelineError naming ``tasks`` with their stages, why, and the tail of each log."""
        parts = []
        for task in tasks:
            try:
                text = self.dvc("queue", "logs", task, timeout=60)
            except PipelineError as exc:
                text = str(exc)
            parts.append(f"--- {task} ({stages.get(task, '?')}) ---\n{text[-3000:]}")
        named = ", ".join(f"{t} ({stages.get(t, '?')})" for t in tasks)
        return PipelineError(f"queued runs {named} {why}:\n" + "\n".join(parts))

    def queue_status(self) -> str:
        """`dvc queue status`; a failure of DVC's own while a worker writes a task's file is
        read again (STATUS_RETRIES times in a row at most), any other failure raised."""
        for _ in range(STATUS_RETRIES - 1):
            try:
                return self.dvc("queue", "status")
            except PipelineError as exc:
                if "ERROR: unexpected error" not in str(exc):
                    raise
                reason = str(exc).split("ERROR: unexpected error - ")[-1].splitlines()[0]
                log.warning("dvc queue status failed (%s): reading it again", reason)
                time.sleep(self.poll)
        return self.dvc("queue", "status")  # the last try: its failure is raised

    def wait(self, stages: Mapping[str, str]) -> dict[str, str]:
        """Poll `dvc queue status` until every task of ``stages`` (task -> stage) has ended;
        restart workers that left tasks queued, fail tasks that overrun or lost their worker."""
        tasks = list(stages)
        running_since: dict[str, float] = {}
        idle_since: float | None = None
        orphaned_since: float | None = None
        missing_since: float | None = None
        while True:
            states = task_states(self.queue_status(), tasks)
            now = time.monotonic()
            missing = [task for task in tasks if task not in states]
            missing_since = (missing_since or now) if missing else None
            if missing_since is not None and now - missing_since > MISSING_SECONDS:
                raise PipelineError(
                    f"dvc queue status has not listed {', '.join(missing)} for "
                    f"{MISSING_SECONDS:g} s (removed from the queue by someone else?)"
                )
            if missing:
                time.sleep(self.poll)
                continue
            if set(states.values()) <= FINAL_STATES:
                return states
            running = [t for t in tasks if states[t] == "Running"]
            for task in running:
                running_since.setdefault(task, now)
            overdue = [t for t in running if now - running_since[t] > self.task_timeout]
            if overdue:
                for task in overdue:
                    try:
                        self.dvc("queue", "kill", "--force", task)
                    except PipelineError as exc:  # its worker's group is stopped below anyway
                        log.warning("%s", exc)
                raise self.fail(
                    overdue, stages, f"ran past --task-timeout {self.task_timeout:.0f} s"
                )
            alive = bool(live_workers(self.queue_dir))
            orphaned_since = None if alive or not running else orphaned_since or now
            if orphaned_since is not None and now - orphaned_since > self.worker_grace:
                raise self.fail(
                    running, stages, "lost their queue worker (it exited or was killed)"
                )
            if running:
                idle_since = None
            else:  # only queued tasks are left
                idle_since = idle_since or now
                if not alive or now - idle_since > IDLE_RESTART_SECONDS:
                    log.warning(
                        "tasks are queued and %s; starting the workers again",
                        "no queue worker is alive" if not alive else "no worker takes them",
                    )
                    self.stop(grace=0)
                    self.start_workers()
                    idle_since = None
            time.sleep(self.poll)

    def run(self, stages: Mapping[str, str]) -> dict[str, str]:
        """Start the workers, wait for ``stages`` (task -> stage), stop the workers; return
        each task's final state."""
        try:
            self.start_workers()
            states = self.wait(stages)
        except BaseException:  # Ctrl-C or a failure: nothing of ours runs on, or later
            self.stop(grace=0)
            self.remove_queued(list(stages))
            raise
        self.stop(self.worker_grace)
        return states

    def remove_queued(self, tasks: Sequence[str]) -> None:
        """Take those of ``tasks`` that are still queued out of the queue, so that no later
        worker runs them; on the way out of a failure, so a failure here is only logged."""
        try:
            states = task_states(self.dvc("queue", "status", timeout=60), tasks)
            queued = [task for task in tasks if states.get(task) == "Queued"]
            if queued:
                self.dvc("queue", "remove", *queued, timeout=60)
                log.info("removed from the queue: %s", ", ".join(queued))
        except PipelineError as exc:
            log.warning("could not take the queued tasks out of the queue: %s", exc)


def run_round(stages: Sequence[str], jobs: int, task_timeout: float) -> None:
    """Train ``stages`` through the queue, ``jobs`` at a time, and take their outputs from
    the run cache into the workspace."""
    env = os.environ | {"PIPELINE_JOBS": str(jobs)}
    queue = QueueRun(Path.cwd(), jobs, task_timeout, env)
    tasks: dict[str, str] = {}
    try:
        for stage in stages:
            tasks[queued_task(queue.dvc("exp", "run", "--queue", stage))] = stage
    except BaseException:
        queue.remove_queued(list(tasks))
        raise
    log.info("queued %s; starting %d workers", ", ".join(stages), jobs)
    states = queue.run(tasks)
    failed = [task for task, state in states.items() if state != "Success"]
    if failed:
        raise queue.fail(failed, tasks, "did not succeed")
    dvc("repro", "--single-item", *stages)


def check_queue_is_free(status_output: str, root: Path) -> None:
    """Refuse to run beside tasks of someone else's: queued ones, or running ones with a live
    worker. A task listed as Running with no worker alive was left by a run that was
    stopped (Ctrl-C, a killed worker); DVC keeps listing it, and it is ignored."""
    queued = re.search(r"\bQueued\s*$", status_output, re.M)
    running = re.search(r"\bRunning\s*$", status_output, re.M)
    if queued or (running and live_workers(root / QUEUE_DIR)):
        raise PipelineError(
            "the experiment queue already holds queued or running tasks; wait for them or "
            "clear it (dvc queue status, dvc queue remove --queued)"
        )
    if running:
        log.warning(
            "dvc queue status lists tasks as Running but no queue worker is alive: "
            "left by a run that was stopped; ignoring them"
        )


def run_parallel(jobs: int, task_timeout: float = DEFAULT_TASK_TIMEOUT_SECONDS) -> list[str]:
    """Train every stale training stage ``jobs`` at a time, round by round, then `dvc repro`;
    return the stages trained in the queue."""
    if jobs < 1:
        raise PipelineError(f"-j: expected a positive number of jobs, got {jobs}")
    if not task_timeout > 0:
        raise PipelineError(
            f"--task-timeout: expected a positive number of seconds, got {task_timeout}"
        )
    check_queue_is_free(dvc("queue", "status", timeout=COMMAND_TIMEOUT_SECONDS), Path.cwd())
    log.info("stages upstream of training, once: dvc repro preprocess")
    dvc("repro", "preprocess")
    trained: list[str] = []
    for prefixes in ROUNDS:
        stages = stale_stages(dvc("status", "--json"), prefixes)
        if stages:
            run_round(stages, jobs, task_timeout)
            trained += stages
    log.info("dvc repro: evaluate and report")
    print(dvc("repro"), end="")
    return trained


def main(argv: list[str]) -> None:
    from mnist_optimizers import cluster  # it imports this module's helpers

    parser = argparse.ArgumentParser(
        prog="python -m mnist_optimizers.parallel", description=__doc__
    )
    parser.add_argument("-j", "--jobs", type=int, default=2, help="stages at a time (2)")
    parser.add_argument(
        "--task-timeout", type=float, default=DEFAULT_TASK_TIMEOUT_SECONDS, metavar="SECONDS",
        help="fail a stage still running after this long (7200)",
    )  # fmt: skip
    cluster.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.ray:
        cluster.run_cluster(cluster.from_arguments(args), args.set_param)
    elif args.set_param or args.address:
        parser.error("-S and --address are for --ray; for the queue use dvc exp run -S")
    else:
        run_parallel(args.jobs, args.task_timeout)


if __name__ == "__main__":
    run_stage(main)
