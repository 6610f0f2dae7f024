"""The stage runner: logging, signals and exit codes, the same for every stage.

A PipelineError becomes one clear line and exit status 1; Ctrl-C and SIGTERM stop a stage
at once, writing nothing, with status 130 or 143. A signal that arrives while the stage is
inside a query to the tracking store waits until the query is over (hold_signals_in_the_store).
"""

from __future__ import annotations

import atexit
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from mnist_optimizers.errors import ParamsError, PipelineError, Terminated, redact
from mnist_optimizers.files import WRITTEN

log = logging.getLogger(__name__)


class RedactingFormatter(logging.Formatter):
    """Every log line, the libraries' included, with passwords and tokens masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging() -> None:
    """Log INFO and above to stderr in one compact format, secrets masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # MLflow's own INFO lines (a new store's "Creating initial MLflow database tables..."),
    # absl's and JAX's ("Unable to initialize backend 'tpu'") say nothing a person acts on;
    # their warnings still show.
    for noisy in ("mlflow", "absl", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# How often a stage checks that the process that started it (dvc) is still there.
PARENT_POLL_SECONDS = 1.0


def _interrupt(signum: int) -> None:
    """Raise the exception that unwinds the stage for ``signum``."""
    global _stopped_by
    _stopped_by = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


# Signals raised inside SQLAlchemy (a query to the MLflow store) broke out of it midway: it
# closed sqlite3's connection under a cursor still open and logged "Error closing cursor"
# with a traceback, and some timings turned Ctrl-C into an MLflow error and exit status 1
# (both seen in CI). Such a signal is held, checked again every HOLD_CHECK_SECONDS, and
# raised once the stage is out of these modules, or after HOLD_AT_MOST_SECONDS (a store that
# hangs); a second signal is raised at once.
HOLD_INSIDE = frozenset({"sqlalchemy", "alembic"})
HOLD_CHECK_SECONDS = 0.02
HOLD_AT_MOST_SECONDS = 5.0

_held: tuple[int, float] | None = None  # the signal held, and since when (monotonic)
_stopped_by: int | None = None  # the signal whose exception is unwinding the stage


def inside_the_store(frame: FrameType | None) -> bool:
    """Whether ``frame``, or a frame that called it, runs SQLAlchemy's or Alembic's code."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] in HOLD_INSIDE:
            return True
        frame = frame.f_back
    return False


def hold(signum: int) -> None:
    """Hold ``signum``: the hold check raises it in HOLD_CHECK_SECONDS, or later."""
    global _held
    _held = (signum, time.monotonic())
    signal.setitimer(signal.ITIMER_REAL, HOLD_CHECK_SECONDS)


def _on_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A signal's exception raised where Python cannot propagate it (a weakref callback, a
    `__del__`, importlib's module-lock callback) is printed as "Exception ignored" and lost:
    the stage would run on (seen in CI: in SQLAlchemy's weakref callback, in importlib's).
    Such a signal is held again, and raised once the stage is out of there."""
    if _stopped_by is not None and isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
        hold(_stopped_by)
        return
    sys.__unraisablehook__(unraisable)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    global _held
    if _held is None and inside_the_store(frame):
        hold(signum)
        return
    _held = None
    signal.setitimer(signal.ITIMER_REAL, 0)
    _interrupt(signum)


def _on_hold_check(signum: int, frame: FrameType | None) -> None:
    global _held
    if _held is None:
        return
    held, since = _held
    if inside_the_store(frame) and time.monotonic() - since < HOLD_AT_MOST_SECONDS:
        signal.setitimer(signal.ITIMER_REAL, HOLD_CHECK_SECONDS)
        return
    _held = None
    _interrupt(held)


def hold_signals_in_the_store() -> None:
    """Install the handlers of SIGTERM, SIGHUP and SIGINT (unless the stage was started with
    SIGINT ignored) that raise their exception, held while inside the store's code."""
    stops = [signal.SIGTERM, signal.SIGHUP]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        stops.append(signal.SIGINT)
    for signum in stops:
        signal.signal(signum, _on_stop_signal)
    signal.signal(signal.SIGALRM, _on_hold_check)
    sys.unraisablehook = _on_unraisable


# The shells DVC runs a stage's cmd in (`$SHELL -c cmd`, /bin/sh without SHELL). Some (dash,
# Debian's /bin/sh) fork the command instead of exec'ing it and outlive a killed dvc.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "busybox"})


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid``, or None where there is no such process."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def is_shell_running_one_command(pid: int) -> bool:
    """Whether ``pid`` is a shell started as `shell [options] -c cmd`, as DVC starts a stage."""
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return len(args) >= 3 and Path(args[0]).name in SHELLS and args[-2] == "-c"


def ancestry_to_watch(parent: int) -> tuple[int, ...]:
    """The processes whose end stops this stage: its parent, and, where the parent is the
    shell DVC ran the cmd in, that shell's parent (dvc) too."""
    if is_shell_running_one_command(parent):
        grandparent = parent_of(parent)
        if grandparent is not None:
            return (parent, grandparent)
    return (parent,)


def ancestry_is(chain: tuple[int, ...]) -> bool:
    """Whether this process's parent, and its parent in turn, are still ``chain``."""
    if os.getppid() != chain[0]:
        return False
    return all(parent_of(child) == parent for child, parent in zip(chain, chain[1:]))


def watch_parent(parent: int, poll: float = PARENT_POLL_SECONDS) -> None:
    """Stop this stage (SIGTERM to itself) once the process that started it is gone: `dvc
    repro` killed or its terminal closed would otherwise leave the stage training on, an
    orphan that writes outputs and a FINISHED MLflow run dvc.lock never records. A shell
    between dvc and the stage (`sh -c cmd`) is looked through: dvc's end counts."""
    chain = ancestry_to_watch(parent)

    def watch() -> None:
        while ancestry_is(chain):
            time.sleep(poll)
        global _parent_gone
        _parent_gone = chain[-1]
        os.kill(os.getpid(), signal.SIGTERM)

    if chain[-1] == 1 and "DVC_STAGE" in os.environ:  # DVC started it, and is gone already
        global _parent_gone
        _parent_gone = chain[-1]
        raise Terminated("its parent ended")
    if chain[-1] > 1:  # else started by init, as a daemon: nothing to watch
        threading.Thread(target=watch, name="watch-parent", daemon=True).start()


_parent_gone: int | None = None


# Where the values of a stage's item come from in params.yaml, by the name its usage gives.
ITEM_LISTS = {"workload": ("compare_workloads",), "optimizer": ("compare",),
              "seed": ("train", "seeds")}  # fmt: skip


def stage_args(
    kind: str, argv: list[str], names: tuple[str, ...], params: Mapping[str, Any]
) -> list[str]:
    """A stage's arguments (``names``: `workload`, `optimizer`, `seed`): as given on the
    command line, or, as DVC runs it, its item in $DVC_STAGE (`mnist_cnn-adam-42` of
    `train@mnist_cnn-adam-42`). dvc.yaml's commands carry no params value, which the shell
    would run (a `compare` entry `adam;touch x` in `${item}`): the item is matched against
    the lists of params.yaml it was made of, as given (the stage checks the values)."""
    module = kind.removesuffix("_tuned")
    flag = " --tuned" if kind.endswith("_tuned") else ""
    usage = (f"usage: python -m stages.{module} {' '.join(f'<{n}>' for n in names)}{flag} "
             "(from params.yaml)")  # fmt: skip
    if argv:
        if len(argv) != len(names):
            raise ParamsError(usage)
        return argv
    stage = os.environ.get("DVC_STAGE", "")
    if not stage.startswith(f"{kind}@"):
        raise ParamsError(f"{usage} (or run it as a DVC stage {kind}@...: $DVC_STAGE names it)")
    item = stage[len(kind) + 1 :]

    def listed(keys: tuple[str, ...]) -> list:
        value: Any = params
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value if isinstance(value, list) else []

    for combination in itertools.product(*(listed(ITEM_LISTS[name]) for name in names)):
        if "-".join(map(str, combination)) == item:
            return [str(value) for value in combination]
    lists = ", ".join(".".join(ITEM_LISTS[name]) for name in names)
    raise ParamsError(f"$DVC_STAGE: {item!r} is no {', '.join(names)} of {lists}")


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's ``main``; a PipelineError becomes one clear line and exit status 1.
    SIGINT (Ctrl-C), SIGTERM and SIGHUP, or the end of the process that started it, stop it
    at once, writing nothing, with status 130, 143 or 129."""
    setup_logging()
    hold_signals_in_the_store()
    freeze_what_is_loaded()
    try:
        watch_parent(os.getppid())
        main(sys.argv[1:])
    except PipelineError as exc:
        if _stopped_by is None:
            log.error("%s", exc)
            sys.exit(1)
        stopped_with(exc, _stopped_by)
    except Exception as exc:
        if _stopped_by is None:
            raise
        stopped_with(exc, _stopped_by)
    except KeyboardInterrupt:
        stopped(signal.SIGINT)
    except Terminated:
        stopped(_stopped_by or signal.SIGTERM)
    else:
        exit_now()


def freeze_what_is_loaded() -> None:
    """Leave the objects loaded so far (TensorFlow's, Keras', MLflow's modules: about half a
    million) out of every later garbage collection (`gc.freeze`). A full collection scanned
    them all, about 0.5 s here each time, and `keras.backend.clear_session()`, which the
    search, gd_variants and evaluate call once per model, runs one. They live as long as the
    process anyway."""
    gc.freeze()


def exit_now() -> None:
    """End a stage that succeeded without Python's teardown of its modules: with TensorFlow
    loaded, that took 1.5 to 2 s a stage here, for nothing (its outputs are written and
    closed, its MLflow run ended). The exit handlers still run (logging's flush, MLflow's,
    temporary files' finalizers); then the process ends with status 0. Under a profiler or
    a tracer (cProfile, coverage, a debugger) it returns instead: they write their results
    at the normal exit."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def stopped_with(exc: Exception, signum: int) -> None:
    """A library turned the signal's exception into an error of its own while the stage
    unwound (a store held past HOLD_AT_MOST_SECONDS): name it, then stop as the signal asks."""
    first_line = next(iter(str(exc).splitlines()), "")[:300]
    log.error("while stopping: %s: %s", type(exc).__name__, first_line)
    stopped(signum)


def stopped(signum: int) -> None:
    """Say why the stage stopped and what it wrote; exit with 128 + ``signum``."""
    if _parent_gone is not None:
        log.error(
            "stopped: the process that started it (pid %d: dvc repro killed, or its "
            "terminal closed) has ended; %s",
            _parent_gone,
            what_was_written(),
        )
    elif signum == signal.SIGINT:
        log.error("interrupted (SIGINT): %s", what_was_written())
    else:
        log.error("terminated (%s): %s", signal.Signals(signum).name, what_was_written())
    sys.exit(128 + signum)


def what_was_written() -> str:
    """The truth about a stage's outputs when it stops midway: none written, or which."""
    rerun = "`dvc repro` runs the stage again"
    if not WRITTEN:
        return f"no output written; {rerun}"
    names = ", ".join(str(path) for path in WRITTEN[:5]) + (", ..." if len(WRITTEN) > 5 else "")
    return (
        f"{len(WRITTEN)} of its outputs were already replaced ({names}), the others not: "
        f"they do not belong together until {rerun}"
    )
