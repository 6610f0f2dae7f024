"""scripts/tracking-server refuses what would expose or break the server, with a usage line,
before it starts anything (the server itself is started in test_team.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tracking-server"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port"], "--port needs a value"),
        (["--port", "--auth"], "--port needs a value"),
        (["--port", "70000"], "--port: expected a port number from 1 to 65535, got '70000'"),
        (["--workers", "two"], "--workers: expected a positive number, got 'two'"),
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
