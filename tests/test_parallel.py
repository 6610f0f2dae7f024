"""The parallel runner: its reading of DVC's output, and how it runs the queue's workers
(its end-to-end run is in test_pipeline.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_optimizers import parallel
from mnist_optimizers.errors import PipelineError

from . import processes


def test_stale_stages_of_each_round_in_pipeline_order() -> None:
    status = {
        "train@adam-42": [{"changed deps": {"params.yaml": "modified"}}],
        "tune@adam": [{"changed deps": {"params.yaml": "modified"}}],
        "train_tuned@adam-42": [{"changed deps": {"metrics/tuned_rate/adam.json": "deleted"}}],
        "train@sgd-42": ["changed outs"],
        "evaluate": [{"changed deps": {"models": "modified"}}],
    }
    first, second = (parallel.stale_stages(json.dumps(status), r) for r in parallel.ROUNDS)
    assert first == ["train@adam-42", "tune@adam", "train@sgd-42"]
    assert second == ["train_tuned@adam-42"]
    assert parallel.stale_stages("{}", parallel.ROUNDS[0]) == []
    assert parallel.stale_stages("", parallel.ROUNDS[0]) == []


def test_queued_experiment_name() -> None:
    output = "Queued experiment 'irony-nowt' for future execution.\n"
    assert parallel.queued_task(output) == "irony-nowt"
    with pytest.raises(PipelineError, match="named no experiment"):
        parallel.queued_task("ERROR: something else\n")


def test_task_states_only_for_our_tasks() -> None:
    status = """Task     Name        Created    Status
1a2b3c4  ready-fees  05:43 PM   Success
9f9f9f9  old-run     04:00 PM   Failed
5e6f7a8  hulky-quey  05:43 PM   Running

Worker status: 1 active, 0 idle
"""
    assert parallel.task_states(status, ["ready-fees", "hulky-quey"]) == {
        "ready-fees": "Success",
        "hulky-quey": "Running",
    }


def test_a_bad_job_count_is_refused() -> None:
    with pytest.raises(PipelineError, match="-j: expected a positive number of jobs, got 0"):
        parallel.run_parallel(0)


# The runner against a queue whose workers are real processes that misbehave as DVC's did:
# `dvc` is replaced by FakeQueue, which starts "workers" (processes whose command line says
# queue-worker, each in its own process group, with a pid file where DVC writes one) and
# answers `dvc queue status` from a script of states.

HANG = "sleep 600 & echo $! > {child}; wait"  # a worker that never exits, with a child
EXIT = "exit 0"  # a worker that exits at once
IGNORE_TERM = "trap '' TERM; sleep 600 & echo $! > {child}; wait"


class FakeQueue:
    def __init__(self, root: Path, tag: str, workers: list[list[str]], states) -> None:
        self.root, self.tag, self.workers, self.states = root, tag, workers, states
        self.queue_dir = root / parallel.QUEUE_DIR
        self.queue_dir.mkdir(parents=True)
        self.calls: list[tuple[str, ...]] = []
        self.starts = 0
        self.children: list[Path] = []

    def __call__(self, *args: str, cwd=None, env=None, timeout=None) -> str:
        self.calls.append(args)
        if args[:2] == ("queue", "start"):
            scripts = self.workers[self.starts]
            self.starts += 1
            for num, script in enumerate(scripts, start=1):
                child = self.root / f"child-{self.starts}-{num}"
                self.children.append(child)
                worker = subprocess.Popen(
                    ["bash", "-c", script.format(child=child), "queue-worker"],
                    start_new_session=True,
                    env=os.environ | {processes.TAG_VARIABLE: self.tag},
                )
                (self.queue_dir / f"dvc-exp-worker-{num}.pid").write_text(str(worker.pid))
            return f"Started '{len(scripts)}' new experiments task queue workers.\n"
        if args[:2] == ("queue", "status"):
            rows = [f"{t[:7]}  {t}  05:43 PM  {s}" for t, s in self.states(self).items()]
            return "Task  Name  Created  Status\n" + "\n".join(rows) + "\n"
        if args[:2] == ("queue", "logs"):
            return f"log of {args[2]}: epoch 3/5\n"
        if args[:2] in (("queue", "kill"), ("queue", "remove")):
            return ""
        raise AssertionError(f"unexpected dvc {args}")


@pytest.fixture
def fake_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A FakeQueue factory; no process it started outlives the test."""
    tag = f"fake-queue-{tmp_path}"
    monkeypatch.setattr(parallel, "KILL_AFTER_SECONDS", 1.0)

    def make(workers: list[list[str]], states) -> FakeQueue:
        queue = FakeQueue(tmp_path, tag, workers, states)
        monkeypatch.setattr(parallel, "dvc", queue)
        return queue

    yield make
    left = processes.stop_tagged(tag, grace=0)
    assert not left, f"the runner left processes running:\n{processes.describe(left)}"


def run_queue(root: Path, tasks: dict[str, str], **options) -> dict[str, str]:
    options = {"worker_grace": 1.0, "poll": 0.05} | options
    return parallel.QueueRun(root, jobs=2, **options).run(tasks)


def test_a_worker_that_misses_its_shutdown_is_stopped_with_a_warning(
    fake_queue, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The CI failure: all tasks succeeded, worker 1 exited, worker 2 never did."""
    queue = fake_queue([[EXIT, HANG]], lambda q: {"ready-fees": "Success"})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mnist_optimizers.parallel"):
        states = run_queue(tmp_path, {"ready-fees": "train@sgd-42"})
    assert states == {"ready-fees": "Success"}
    assert time.monotonic() - started < 10  # grace 1 s, then SIGTERM
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "dvc-exp-worker-2" in warning and "dvc-exp-worker-1" not in warning
    assert "results are complete" in warning
    # The hung worker's whole group went: its own child (tagged like it) too.
    assert int(queue.children[1].read_text()) > 0
    assert processes.tagged(queue.tag) == {}


def test_a_worker_that_ignores_sigterm_is_killed(fake_queue, tmp_path: Path) -> None:
    queue = fake_queue([[IGNORE_TERM, IGNORE_TERM]], lambda q: {"ready-fees": "Success"})
    assert run_queue(tmp_path, {"ready-fees": "train@sgd-42"}) == {"ready-fees": "Success"}
    assert processes.tagged(queue.tag) == {}


def test_a_task_past_its_deadline_fails_with_its_name_and_log(fake_queue, tmp_path: Path) -> None:
    queue = fake_queue([[HANG, HANG]], lambda q: {"hulky-quey": "Running", "ready-fees": "Success"})
    with pytest.raises(PipelineError) as error:
        run_queue(tmp_path, {"hulky-quey": "tune@adam", "ready-fees": "train@sgd-42"},
                  task_timeout=0.5)  # fmt: skip
    message = str(error.value)
    assert "queued runs hulky-quey (tune@adam) ran past --task-timeout 0 s" in message
    assert "log of hulky-quey: epoch 3/5" in message and "ready-fees" not in message
    assert ("queue", "kill", "--force", "hulky-quey") in queue.calls
    assert processes.tagged(queue.tag) == {}  # stopped at once, no grace


def test_workers_that_stop_early_are_started_again(
    fake_queue, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dvc-task #77: the monitor shut the workers down with tasks still queued."""
    queue = fake_queue(
        [[EXIT, EXIT], [EXIT, HANG]],
        lambda q: {"ready-fees": "Success" if q.starts == 2 else "Queued"},
    )
    with caplog.at_level(logging.WARNING, logger="mnist_optimizers.parallel"):
        assert run_queue(tmp_path, {"ready-fees": "train@sgd-42"}) == {"ready-fees": "Success"}
    assert queue.starts == 2
    assert any("no queue worker is alive" in r.getMessage() for r in caplog.records)


def test_a_task_whose_worker_died_fails(fake_queue, tmp_path: Path) -> None:
    fake_queue([[EXIT, EXIT]], lambda q: {"hulky-quey": "Running"})
    with pytest.raises(PipelineError, match=r"hulky-quey \(train@adam-42\) lost their queue"):
        run_queue(tmp_path, {"hulky-quey": "train@adam-42"})


def test_workers_that_never_take_the_tasks_fail_the_run_after_three_starts(
    fake_queue, tmp_path: Path
) -> None:
    queue = fake_queue([[EXIT, EXIT]] * 3, lambda q: {"ready-fees": "Queued"})
    with pytest.raises(PipelineError, match="workers stopped 3 times with tasks still queued"):
        run_queue(tmp_path, {"ready-fees": "train@sgd-42"})
    assert queue.starts == 3


def test_a_command_that_leaves_a_daemon_holding_its_output_returns_at_once() -> None:
    """`dvc queue start` forks a daemon that keeps its stdout: read through a pipe, the
    runner waited for that daemon (the worker) to exit."""
    daemon = "import subprocess; print(subprocess.Popen(['sleep', '30']).pid)"
    started = time.monotonic()
    output = parallel.command([sys.executable, "-c", daemon])
    elapsed = time.monotonic() - started
    os.kill(int(output), signal.SIGKILL)
    assert elapsed < 10


def test_a_task_missing_from_one_status_listing_is_waited_for(fake_queue, tmp_path: Path) -> None:
    """Under load `dvc queue status` can miss a task a worker is taking (it lists the running
    tasks, then the queued ones): the run on the busy CI machine that failed on this."""
    polls = []

    def states(queue: FakeQueue) -> dict[str, str]:
        polls.append(1)
        return {} if len(polls) <= 2 else {"ready-fees": "Success"}

    fake_queue([[EXIT, EXIT]], states)
    assert run_queue(tmp_path, {"ready-fees": "train@sgd-42"}) == {"ready-fees": "Success"}
    assert len(polls) == 3


DVC_RACE = PipelineError(
    "dvc queue status failed:\nTask  Name  Created  Status\n\n"
    "ERROR: unexpected error - Expecting value: line 1 column 1 (char 0)\n"
)  # what CI saw while a worker was writing a task's info file


def test_a_status_listing_that_fails_inside_dvc_is_read_again(fake_queue, tmp_path: Path) -> None:
    polls = []

    def states(queue: FakeQueue) -> dict[str, str]:
        polls.append(1)
        if len(polls) <= 2:
            raise DVC_RACE
        return {"ready-fees": "Success"}

    fake_queue([[EXIT, EXIT]], states)
    assert run_queue(tmp_path, {"ready-fees": "train@sgd-42"}) == {"ready-fees": "Success"}
    assert len(polls) == 3


def test_a_status_listing_that_keeps_failing_fails_the_run(fake_queue, tmp_path: Path) -> None:
    polls = []

    def states(queue: FakeQueue) -> dict[str, str]:
        polls.append(1)
        raise DVC_RACE

    fake_queue([[EXIT, EXIT]], states)
    with pytest.raises(PipelineError, match="Expecting value"):
        run_queue(tmp_path, {"ready-fees": "train@sgd-42"})
    assert len(polls) >= parallel.STATUS_RETRIES  # then once more as the run cleans up


def test_a_task_gone_from_the_queue_fails_the_run(
    fake_queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "MISSING_SECONDS", 0.5)
    fake_queue([[HANG, HANG]], lambda q: {"ready-fees": "Success"})
    with pytest.raises(PipelineError, match=r"has not listed hulky-quey for 0.5 s \(removed"):
        run_queue(tmp_path, {"hulky-quey": "train@adam-42", "ready-fees": "train@sgd-42"})


def test_a_command_past_its_timeout_is_killed_with_a_clear_error() -> None:
    with pytest.raises(PipelineError, match=r"^sleeper did not finish within 1 s \(killed\)$"):
        parallel.command(["sleep", "30"], timeout=1, name="sleeper")


def test_ctrl_c_stops_the_workers_and_takes_our_queued_tasks_out_of_the_queue(
    fake_queue, tmp_path: Path
) -> None:
    polls = []

    def states(queue: FakeQueue) -> dict[str, str]:
        polls.append(1)
        if len(polls) == 2:
            raise KeyboardInterrupt
        return {"hulky-quey": "Running", "ready-fees": "Queued", "old-run": "Queued"}

    queue = fake_queue([[HANG, HANG]], states)
    with pytest.raises(KeyboardInterrupt):
        run_queue(tmp_path, {"hulky-quey": "train@adam-42", "ready-fees": "train@sgd-42"})
    assert processes.tagged(queue.tag) == {}  # the running task's worker went with it
    assert queue.calls[-1] == ("queue", "remove", "ready-fees")  # ours only


@pytest.mark.parametrize(
    ("status", "worker_alive", "refused"),
    [
        ("1a2b3c4  ready-fees  05:43 PM  Queued", False, True),
        ("5e6f7a8  hulky-quey  05:43 PM  Running", True, True),
        ("5e6f7a8  hulky-quey  05:43 PM  Running", False, False),  # left by a stopped run
        ("9f9f9f9  old-run     04:00 PM  Failed", False, False),
    ],
)
def test_the_runner_refuses_to_run_beside_live_tasks_only(
    tmp_path: Path, status: str, worker_alive: bool, refused: bool
) -> None:
    queue_dir = tmp_path / parallel.QUEUE_DIR
    queue_dir.mkdir(parents=True)
    worker = subprocess.Popen(["bash", "-c", "sleep 60; true", "queue-worker"])  # no exec
    try:
        if worker_alive:
            (queue_dir / "dvc-exp-worker-1.pid").write_text(str(worker.pid))
        output = f"Task  Name  Created  Status\n{status}\n\nWorker status: 0 active, 0 idle\n"
        if refused:
            with pytest.raises(PipelineError, match="already holds queued or running tasks"):
                parallel.check_queue_is_free(output, tmp_path)
        else:
            parallel.check_queue_is_free(output, tmp_path)
    finally:
        worker.kill()
        worker.wait()
