"""scripts/postgres-local takes only a port number for PORT, any folder name for DIR, and
leaves no server running when it refuses."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from .servers import INSTALL_POSTGRES, SCRIPTS, free_port

SCRIPT = str(SCRIPTS / "postgres-local")


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder user `postgres` can enter (run as root, the script hands the cluster to it)."""
    if not shutil.which("pg_ctl") and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_POSTGRES}")
    parent = Path(tempfile.mkdtemp(prefix="pipeline-test-pg-"))
    parent.chmod(0o755)
    yield parent
    for cluster in parent.iterdir():
        subprocess.run([SCRIPT, "stop", str(cluster)], capture_output=True, check=False)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.parametrize(
    "port",
    ["15745 -c listen_addresses=127.0.0.2", "5432;touch x", "1e3", "0", "70000", "", " 5432"],
)
def test_a_port_that_is_not_a_port_number_is_refused_before_anything_starts(
    folder: Path, port: str
) -> None:
    cluster = folder / "cluster"
    result = subprocess.run(
        [SCRIPT, "start", str(cluster), port], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert f"PORT: expected a port number from 1 to 65535, got '{port}'" in result.stderr
    assert not cluster.exists() and result.stdout == ""  # nothing made, nothing started


def test_a_folder_with_a_space_and_a_quote_holds_a_working_cluster(folder: Path) -> None:
    cluster = folder / "team's store 1"
    port = free_port()
    started = subprocess.run(
        [SCRIPT, "start", str(cluster), f"0{port}"], capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip()
    assert uri == f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    with psycopg.connect(uri, connect_timeout=10) as conn:
        assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(cluster),)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    again = subprocess.run(  # a second start of a running cluster fails, and stops nothing
        [SCRIPT, "start", str(cluster), str(port)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 1
    with psycopg.connect(uri, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    stopped = subprocess.run([SCRIPT, "stop", str(cluster)], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=5)
