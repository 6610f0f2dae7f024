"""The stage runner: what a stage stopped midway says, and exit statuses, in a real process."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A stage that writes two of its outputs, then waits to be stopped.
WRITES_TWO = """
import time
from mnist_optimizers.cli import run_stage
from mnist_optimizers.files import write_text_atomic

def main(argv):
    write_text_atomic("reports/a.md", "a")
    write_text_atomic("reports/b.md", "b")
    print("written", flush=True)
    time.sleep(60)

run_stage(main)
"""

# A stage that only waits: stopped before it wrote anything.
WAITS = """
import time
from mnist_optimizers.cli import run_stage

def main(argv):
    print("started", flush=True)
    time.sleep(60)

run_stage(main)
"""


def start(code: str, cwd: Path, **options) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **options,
    )
    assert process.stdout is not None
    process.stdout.readline()  # it is running its main
    return process


@pytest.mark.parametrize(
    ("sig", "status", "name"),
    [(signal.SIGINT, 130, "interrupted (SIGINT)"), (signal.SIGTERM, 143, "terminated (SIGTERM)"),
     (signal.SIGHUP, 129, "terminated (SIGHUP)")],
)  # fmt: skip
def test_a_stage_stopped_after_writing_some_outputs_says_which(
    tmp_path: Path, sig: int, status: int, name: str
) -> None:
    process = start(WRITES_TWO, tmp_path)
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    assert process.returncode == status
    assert f"{name}: 2 of its outputs were already replaced (reports/a.md, reports/b.md)" in err
    assert "Traceback" not in err


def test_a_stage_stopped_before_writing_says_so(tmp_path: Path) -> None:
    process = start(WAITS, tmp_path)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143
    assert "terminated (SIGTERM): no output written; `dvc repro` runs the stage again" in err


@pytest.mark.parametrize("shell", [None, "/bin/sh", "bash"], ids=["direct", "sh-c", "bash-c"])
def test_a_stage_whose_parent_dies_stops_within_seconds(tmp_path: Path, shell: str | None) -> None:
    """The parent (dvc repro) killed: the stage notices and stops, also where DVC ran its
    cmd in a shell that stays between them (`sh -c cmd`: dash forks the command)."""
    stage_cmd = [sys.executable, "-c", WAITS]
    if shell is not None:
        stage_cmd = [shell, "-c", shlex.join(stage_cmd)]
    parent = subprocess.Popen(
        [sys.executable, "-c", f"""
import subprocess, sys, time
child = subprocess.Popen({stage_cmd!r}, stdout=subprocess.PIPE,
                         stderr=open("stage.log", "w"), text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(60)
"""],
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    started = int(parent.stdout.readline())  # the stage, or the shell it runs in
    stages = [started, *_children(started)]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in stages) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in stages if _alive(pid)]
    for pid in alive:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    assert not alive, "the stage trained on as an orphan"
    log = (tmp_path / "stage.log").read_text()
    assert f"stopped: the process that started it (pid {parent.pid}" in log, log
    assert "has ended" in log and "Traceback" not in log, log


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_bytes().rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
    except (OSError, IndexError):
        return b"Z"
