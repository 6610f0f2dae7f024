"""The one way the project runs another program: `run_command`.

Standard library only: the parallel runner ships this module by value to machines that have
the requirements but not this package (mnist_optimizers/parallel_task.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# From SIGTERM (a stage ends its MLflow run KILLED) to SIGKILL, when a command is stopped.
STOP_GRACE_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


class CommandFailed(Exception):
    """A command exited non-zero or ran past its deadline; the message holds its output."""


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux), so
    that a command is never left running for nobody."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group of ``process``, then SIGKILL what is left after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
) -> str:
    """Run ``argv`` in its own process group; return its output (stdout and stderr together).

    CommandFailed, naming ``what`` (the command by default) with the end of its output, when
    it exits non-zero or is still running after ``timeout`` seconds (then it is stopped with
    its group). Interrupted (Ctrl-C, a cancelled task), it is stopped the same way. Output
    goes through a file, not a pipe: a daemon the command leaves behind would keep a pipe
    open, and reading it to its end would wait for that daemon."""
    what = what or " ".join(argv)
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process)
            raise CommandFailed(f"{what} did not finish within {timeout:.0f} s (stopped)") from None
        except BaseException:
            stop_group(process)
            raise
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code != 0:
        raise CommandFailed(f"{what} failed (exit status {code}):\n{text[-6000:]}")
    return text
