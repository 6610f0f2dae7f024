"""Real servers for the team-mode tests: PostgreSQL, the MLflow tracking server and model
server, each on 127.0.0.1 on a free port, each stopped when its `with` block ends, even on a
failing test. Missing PostgreSQL or Chromium skips the tests that need them, saying what to
install; CI installs both (.ci/run)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = PROJECT_ROOT / "scripts"
# A PostgreSQL server the tests may create databases in, instead of starting their own.
POSTGRES_ENV = "TEST_POSTGRES_URI"
INSTALL_POSTGRES = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set " + (
    f"{POSTGRES_ENV} to a server's URI"
)
INSTALL_CHROMIUM = (
    "install Chromium and ChromeDriver (Debian: apt-get install chromium chromium-driver)"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the venv's scripts (mlflow, uvicorn, dvc) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | (extra or {})


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or is slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited {process.returncode} before {url} answered:\n{tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


# How long a server may take to stop after TERM before it is killed. A tracking server stops
# in about 2 s on an idle machine; a KILL skips what its script cleans up on exit (the auth
# configuration), so the grace is wide for a machine the whole suite keeps busy.
STOP_GRACE_SECONDS = 60


def stop(process: subprocess.Popen) -> None:
    """Stop a server and everything it started (its process group): TERM, then KILL after
    STOP_GRACE_SECONDS, saying so on stderr (what it would have cleaned up stays)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"server {process.args}: still running {STOP_GRACE_SECONDS} s after TERM: killed",
              file=sys.stderr)  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextlib.contextmanager
def server(
    args: Sequence[str], health_url: str, log: Path, env: dict[str, str], timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """Run ``args`` as a server in its own process group until the block ends."""
    with log.open("w") as out:
        process = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_http(health_url, process, log, timeout)
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server: `$TEST_POSTGRES_URI`, or a throwaway cluster started by
    scripts/postgres-local on a free port and deleted after. Yields a database's URI."""
    if uri := os.environ.get(POSTGRES_ENV):
        yield uri
        return
    if not shutil.which("pg_ctl") and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_POSTGRES}")
    script = str(SCRIPTS / "postgres-local")
    # Under the system temp folder, not pytest's: run as root, the script hands the cluster
    # to user `postgres`, who cannot enter pytest's root-only folders.
    folder = Path(tempfile.mkdtemp(prefix="pipeline-test-pg-"))
    started = subprocess.run(
        [script, "start", str(folder), str(free_port())], capture_output=True, text=True
    )
    if started.returncode == 3:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_POSTGRES}")
    try:
        assert started.returncode == 0, f"postgres-local start failed:\n{started.stderr}"
        yield started.stdout.strip()
    finally:
        subprocess.run([script, "stop", str(folder)], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def create_database(server_uri: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_uri``; return its URI."""
    import psycopg

    with psycopg.connect(server_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server_uri.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def tracking_server(
    backend_uri: str,
    folder: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """scripts/tracking-server on ``backend_uri``, artifacts in ``folder``; yields its URL."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    server_env = tool_env(
        {"MLFLOW_BACKEND_STORE_URI": backend_uri, "MLFLOW_ARTIFACTS_DESTINATION": str(folder)}
        | (env or {})
    )
    url = f"http://127.0.0.1:{port}"
    args = [str(SCRIPTS / "tracking-server"), "--port", str(port), *extra_args]
    with server(args, f"{url}/health", folder.parent / f"tracking-server-{port}.log", server_env):
        yield url


def require_chromium() -> tuple[str, str]:
    """Paths of Chromium and ChromeDriver, or skip the test saying what to install."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(f"Chromium or ChromeDriver is not installed: {INSTALL_CHROMIUM}")
    return chromium, driver
