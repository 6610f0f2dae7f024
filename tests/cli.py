"""The real command lines the end-to-end tests run: git and DVC in a fresh copy of the
project, with an environment that carries nothing of the developer's MLflow or DVC settings
and tags every process started in it (tests/processes.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import processes
from .conftest import copy_project, write_params


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command; fail the test with its output if it exits non-zero."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{output[-5000:]}"
    return output


def dvc(root: Path, env: dict[str, str], *args: str) -> str:
    """Run the real DVC CLI in ``root``."""
    return run([sys.executable, "-m", "dvc", *args], root, env)


def project_env(root: Path, mirror: Path) -> dict[str, str]:
    """The environment to run the project at ``root`` in: the venv's tools first on PATH,
    MNIST from ``mirror``, no MLFLOW_ or DVC_ variables (each test chooses its own store),
    every process it starts tagged with ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "MNIST_MIRROR": str(mirror),
        processes.TAG_VARIABLE: str(root),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }


def project_repo(root: Path, mirror: Path, params: dict[str, Any]) -> dict[str, str]:
    """The project with ``params`` in a fresh git repo at ``root``, data from ``mirror``;
    return the environment to run it in (project_env)."""
    root.mkdir(parents=True, exist_ok=True)
    copy_project(root)
    write_params(root, params)
    env = project_env(root, mirror)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return env


def copy_repo(source: Path, dest: Path, env: dict[str, str]) -> dict[str, str]:
    """Copy the project repo at ``source`` to ``dest``: git history, DVC cache and
    experiments, and the MLflow store, whose absolute artifact paths are moved to the copy.
    Return the environment to run the copy in (its own process tag)."""
    shutil.copytree(source, dest, symlinks=True)
    store = dest / "mlflow.db"
    if store.exists():
        replace_in_store(store, str(source), str(dest))
    return env | {processes.TAG_VARIABLE: str(dest)}


def replace_in_store(store: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in every text value of the SQLite database ``store``."""
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (old, new, old),
                )


def check_no_processes_left(env: dict[str, str], grace: float = 15.0) -> None:
    """Fail if a process started with ``env`` is still alive ``grace`` seconds from now; it
    is killed either way."""
    left = processes.stop_tagged(env[processes.TAG_VARIABLE], grace)
    assert not left, f"processes left running (now killed):\n{processes.describe(left)}"
