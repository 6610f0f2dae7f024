"""The real command lines the end-to-end tests run: git and DVC in a fresh copy of the
project, with an environment that carries nothing of the developer's MLflow or DVC settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return [
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    ]


def project_repo(root: Path, mirror: Path, params: dict[str, Any]) -> dict[str, str]:
    """The project with ``params`` in a fresh git repo at ``root``, data from ``mirror``;
    return the environment to run it in (the venv's tools first on PATH, no MLFLOW_ or
    DVC_ variables, so each test chooses its own store)."""
    root.mkdir(parents=True, exist_ok=True)
    copy_project(root)
    write_params(root, params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "MNIST_MIRROR": str(mirror),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    return env
