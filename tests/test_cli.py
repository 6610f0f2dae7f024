"""The stage runner: what a stage stopped midway says, and exit statuses, in a real process."""

from __future__ import annotations

import json
import random
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
# A stage's environment: this checkout's code, nothing of the developer's.
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}

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
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **options,
    )
    assert process.stdout is not None
    process.stdout.readline()  # it is running its main
    return process


def run_to_the_end(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``args`` in the stage environment and wait (60 s at most) for its end."""
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=60)


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
        cwd=tmp_path, env=ENV,
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
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# SQLAlchemy queries to a SQLite store in a loop, as MLflow's store runs them, with a little
# work of the stage's own between them, until a signal stops them; prints the modules of the
# frames its exception was raised through.
QUERIES_UNTIL_STOPPED = """
import json, os, signal, sys, threading, time, traceback
import sqlalchemy
from mnist_optimizers import cli

cli.HOLD_AT_MOST_SECONDS = float(sys.argv[1])
cli.hold_signals_in_the_store()
engine = sqlalchemy.create_engine("sqlite:///store.db")
table = sqlalchemy.Table("t", sqlalchemy.MetaData(), sqlalchemy.Column("x", sqlalchemy.Integer))
table.metadata.create_all(engine)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    while True:
        with engine.begin() as connection:
            connection.execute(table.insert(), [{"x": x} for x in range(20)])
            connection.execute(table.select().limit(500)).fetchall()
        time.sleep(0.002)
except cli.Terminated as exc:
    print(json.dumps([f.f_globals["__name__"] for f, _ in traceback.walk_tb(exc.__traceback__)]))
"""


def test_a_signal_during_a_store_query_is_raised_once_the_query_is_over(tmp_path: Path) -> None:
    """Raised inside SQLAlchemy, the signal's exception closed the connection under an open
    cursor (SQLAlchemy logged a traceback), left the database locked so that the run could
    not be marked KILLED, or became an MLflow error and exit status 1."""
    hold_at_most = "60"  # held until out of the store, however long that takes
    result = run_to_the_end([sys.executable, "-c", QUERIES_UNTIL_STOPPED, hold_at_most], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    raised_through = json.loads(result.stdout)
    assert raised_through[-1] == "mnist_optimizers.cli"  # our handler raised it
    assert not [m for m in raised_through if m.startswith("sqlalchemy")], raised_through
    assert "Traceback" not in result.stderr


# A "store" that hangs inside SQLAlchemy's code (a module named like it); it says so from
# inside, so that the test's signal cannot arrive before.
HANGS_IN_THE_STORE = """
import time
from mnist_optimizers import cli
from mnist_optimizers.cli import run_stage

cli.HOLD_AT_MOST_SECONDS = 1.0
hang = {"__name__": "sqlalchemy.hanging", "time": time}
exec(
    "def query():\\n    print('querying', flush=True)\\n    while True:\\n        time.sleep(0.01)",
    hang,
)

def main(argv):
    hang["query"]()

run_stage(main)
"""


def test_a_store_that_hangs_holds_a_signal_for_seconds_only(tmp_path: Path) -> None:
    process = start(HANGS_IN_THE_STORE, tmp_path)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    held = time.monotonic() - sent
    assert process.returncode == 143, err
    assert "terminated (SIGTERM): no output written" in err
    assert 1.0 <= held < 10, f"stopped after {held:.1f} s"


def test_a_second_signal_during_a_hold_is_raised_at_once(tmp_path: Path) -> None:
    process = start(HANGS_IN_THE_STORE.replace("= 1.0", "= 600.0"), tmp_path)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None  # held
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted (SIGINT)" in err


# A stage that spends most of its time in code where Python cannot raise an exception: a
# `__del__` or a weakref callback (where SQLAlchemy's and importlib's own callbacks ran when a
# signal was lost in CI). It says so from inside, so that the signal lands there.
IN_A_CALLBACK = """
import sys, time, weakref
from mnist_optimizers.cli import run_stage

class Slow:
    def __del__(self):
        slow()

def slow():
    print("inside", flush=True)
    time.sleep(0.3)

def make(kind):
    if kind == "__del__":
        return Slow()
    thing = type("Plain", (), {})()
    return (weakref.ref(thing, lambda ref: slow()), thing)  # freed last to first

def main(argv):
    while True:
        made = make(argv[0])
        del made  # runs the callback
        time.sleep(0.1)

run_stage(main)
"""


@pytest.mark.parametrize("kind", ["__del__", "weakref"])
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_that_lands_in_a_callback_still_stops_the_stage(
    tmp_path: Path, kind: str, sig: signal.Signals, status: int
) -> None:
    """Raised in a callback, the signal's exception is "ignored" by Python: the stage ran on
    until killed. It is raised again once the stage is out of the callback."""
    process = subprocess.Popen(
        [sys.executable, "-c", IN_A_CALLBACK, kind], cwd=tmp_path, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert select.select([process.stdout], [], [], 30)[0], "never inside its callback"
        assert process.stdout.readline() == "inside\n"
        process.send_signal(sig)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == status, err[-3000:]
    assert "no output written" in err and "Exception ignored" not in err, err[-3000:]


# A stage logging to a real MLflow SQLite store as fast as it can (most of its time is in
# the store), stopped by a signal at a random moment.
LOGS_UNTIL_STOPPED = """
import mlflow
from mnist_optimizers import mlflow_runs, mlflow_store
from mnist_optimizers.cli import run_stage

def main(argv):
    experiment_id = mlflow_store.setup_experiment("busy")
    with mlflow_runs.tracked_run(experiment_id, "busy", mlflow_runs.run_tags("busy")) as run:
        print(run.info.run_id, flush=True)
        for step in range(10**9):
            mlflow.log_metrics({"a": step, "b": -step}, step=step)
            mlflow.get_run(run.info.run_id)

run_stage(main)
"""


def test_a_stage_stopped_while_it_logs_to_the_store_ends_its_run_killed(tmp_path: Path) -> None:
    import mlflow

    stages = {}
    for i, sig in enumerate([signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        folder = tmp_path / str(i)
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        process = subprocess.Popen(
            [sys.executable, "-c", LOGS_UNTIL_STOPPED], cwd=folder,
            env=ENV | {"MLFLOW_TRACKING_URI": uri, "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        stages[i] = (process, sig, uri)
    try:
        for process, sig, uri in stages.values():
            assert process.stdout is not None
            run_id = process.stdout.readline().strip()
            time.sleep(random.uniform(0.1, 0.5))
            process.send_signal(sig)
            try:
                _, err = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # seen once in CI: where is it stuck?
                process.send_signal(signal.SIGABRT)  # faulthandler prints every thread
                _, err = process.communicate(timeout=30)
                pytest.fail(f"still running 60 s after {sig.name}; its threads:\n{err[-8000:]}")
            assert process.returncode == 128 + sig, err[-3000:]
            assert "Traceback" not in err and "WARNING" not in err, err[-3000:]
            assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "KILLED"
    finally:
        for process, _, _ in stages.values():
            process.kill()
            process.communicate()


# A stage whose library turns Ctrl-C into an error of its own, as SQLAlchemy did when the
# signal was raised inside it.
CONVERTS_THE_INTERRUPT = """
import time
from mnist_optimizers.cli import run_stage

def main(argv):
    try:
        print("started", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        raise RuntimeError("Cannot operate on a closed database.") from None

run_stage(main)
"""


def test_an_interrupt_a_library_turned_into_an_error_still_stops_as_interrupted(
    tmp_path: Path,
) -> None:
    process = start(CONVERTS_THE_INTERRUPT, tmp_path)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "while stopping: RuntimeError: Cannot operate on a closed database." in err
    assert "interrupted (SIGINT): no output written" in err
    assert "Traceback" not in err


# A stage that succeeds, with an exit handler and output still in its buffers.
SUCCEEDS = """
import atexit, sys
from pathlib import Path
from mnist_optimizers.cli import run_stage

def main(argv):
    atexit.register(lambda: Path("exit-handler-ran").write_text("yes"))
    sys.stdout.write("unflushed line")  # no newline, no flush

run_stage(main)
"""


def test_a_stage_that_succeeds_exits_0_with_its_exit_handlers_run_and_output_flushed(
    tmp_path: Path,
) -> None:
    """A successful stage skips Python's teardown (cli.exit_now), not what teardown does for it."""
    result = run_to_the_end([sys.executable, "-c", SUCCEEDS], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "unflushed line"
    assert (tmp_path / "exit-handler-ran").read_text() == "yes"


def test_a_stage_run_under_cprofile_writes_its_profile(tmp_path: Path) -> None:
    """The fast exit of a successful stage gives way to a profiler, which writes at exit."""
    (tmp_path / "stage.py").write_text(SUCCEEDS)
    result = run_to_the_end(
        [sys.executable, "-m", "cProfile", "-o", "stage.prof", "stage.py"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stage.prof").stat().st_size > 0


FREEZE_COUNT = """
import gc
from mnist_optimizers.cli import run_stage

def main(argv):
    print(gc.get_freeze_count())

run_stage(main)
"""


def test_what_a_stage_loaded_before_its_main_is_left_out_of_garbage_collections(
    tmp_path: Path,
) -> None:
    """With TensorFlow loaded, each full collection scanned half a million objects (0.5 s),
    and `keras.backend.clear_session()` runs one per model (cli.freeze_what_is_loaded)."""
    result = run_to_the_end([sys.executable, "-c", FREEZE_COUNT], tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 1000  # the modules imported so far: logging, MLflow's errors...
