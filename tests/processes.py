"""Find and stop the processes a test (or a CI run) started, daemons included: each gets an
environment variable with a tag, which every process it starts inherits, even one that left
its parent's process tree (Ray's servers do).

    python -m tests.processes NAME=TAG [GRACE]   # stop what is tagged; list it; exit 1 if any

A test's tag is in PIPELINE_PROCESS_TAG (tests/cli.py sets one per project repo); `.ci/run`
puts its own in PIPELINE_CI_TAG, so that one sweep finds whatever the whole run left.

Process queries through psutil, as in the library.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

TAG_VARIABLE = "PIPELINE_PROCESS_TAG"


def tagged(tag: str, variable: str = TAG_VARIABLE) -> dict[int, str]:
    """pid -> command line of each live process whose environment sets ``variable`` to
    ``tag``; not this process or its parent (the shell that runs it)."""
    found = {}
    for process in psutil.process_iter():
        if process.pid in (os.getpid(), os.getppid()):
            continue
        try:
            if process.environ().get(variable) != tag:
                continue
            if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue  # dead, waiting to be reaped
            found[process.pid] = " ".join(process.cmdline())
        except psutil.Error:  # gone, or not ours to read
            continue
    return found


def stop_tagged(tag: str, grace: float, variable: str = TAG_VARIABLE) -> dict[int, str]:
    """Wait up to ``grace`` seconds for the processes tagged ``tag`` to end, then SIGKILL the
    rest; return those that were still alive after the wait."""
    deadline = time.monotonic() + grace
    while (left := tagged(tag, variable)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def describe(processes: dict[int, str]) -> str:
    return "\n".join(f"  pid {pid}: {cmdline[:300]}" for pid, cmdline in processes.items())


if __name__ == "__main__":
    name, _, value = sys.argv[1].partition("=")
    left = stop_tagged(value, float(sys.argv[2]) if len(sys.argv) > 2 else 5.0, name)
    if left:
        print(f"processes left running, now killed:\n{describe(left)}", file=sys.stderr)
    sys.exit(1 if left else 0)
