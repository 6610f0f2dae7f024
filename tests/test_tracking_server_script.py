"""scripts/tracking-server refuses what would expose or break the server, with a usage line,
before it starts anything (the server itself is started in test_team.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tracking-server"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port"], "--port needs a value"),
        (["--port", "--auth"], "--port needs a value"),
        (["--port", "70000"], "--port: expected a port number from 1 to 65535, got '70000'"),
        (["--port", "1e3"], "--port: expected a port number from 1 to 65535, got '1e3'"),
        (["--port", "0"], "--port: expected a port number from 1 to 65535, got '0'"),
        (["--workers", "two"], "--workers: expected a number from 1 to"),
        (["--workers", "100000"], "(4 per core here), got '100000'"),
        (["--workers", "0"], "--workers: expected a number from 1 to"),
        (["--host", "127.0.0.1.example.com"], "--host 127.0.0.1.example.com shares the server"),
        (["--host", "localhost.evil.org"], "add --auth (or --insecure-no-auth"),
        (["--host", "127.0.0.1 -x"], "--host: expected an IP address or a host name, got"),
        (["--host", "a;b"], "--host: expected an IP address or a host name, got 'a;b'"),
        (["--host", "::"], "--host :: shares the server with the network"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0 shares the server with the network"),
        (["--host", "10.1.2.3"], "add --auth (or --insecure-no-auth"),
        (["--host", "0.0.0.0", "--auth"], "--host 0.0.0.0: give --allowed-hosts"),
        (["--host", "0.0.0.0", "--insecure-no-auth"], "give --allowed-hosts"),
        (["--verbose"], "unknown option --verbose"),
    ],
)
def test_the_script_refuses_with_a_usage_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert message in result.stderr and "(see --help)" in result.stderr
    assert "unbound variable" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "shown"),
    [(["--port", "08080", "--workers", "08"], "--port 8080 --workers 8"),
     (["--host", "127.0.0.2"], "--host 127.0.0.2 --port 5000"),
     (["--host", "::1"], "--host ::1 --port 5000"),
     (["--host", "localhost"], "--host localhost --port 5000")],
    ids=["leading-zeros", "loopback-v4", "loopback-v6", "localhost"],
)  # fmt: skip
def test_loopback_hosts_and_decimal_numbers_are_taken(
    args: list[str], shown: str, tmp_path: Path
) -> None:
    """What the script would start, seen through an `mlflow` on PATH that prints its
    arguments: no --auth or --allowed-hosts needed on a loopback address."""
    (tmp_path / "mlflow").write_text('#!/bin/sh\necho "mlflow $*"\n')
    (tmp_path / "mlflow").chmod(0o755)
    path = f"{tmp_path}:{Path(sys.executable).parent}:/usr/bin:/bin"
    env = {"PATH": path, "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout and "--allowed-hosts" not in result.stdout
