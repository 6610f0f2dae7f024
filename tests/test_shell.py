"""No string from params.yaml reaches a shell: dvc.yaml's commands carry no params value
(the stages learn their optimizer and seed from $DVC_STAGE), so a `compare` entry or a seed
that is a shell command is a bad name, refused by the stage, whichever DVC command runs it:
`dvc repro -s` skips check_params, which would refuse it first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .cli import dvc, project_repo
from .conftest import WORKLOAD, tiny_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_mirror) -> tuple[Path, dict[str, str]]:
    mirror, sha256 = tiny_mirror
    root = tmp_path_factory.mktemp("shell") / "project"
    env = project_repo(root, mirror, tiny_params(sha256) | {"compare": ["adam"]})
    dvc(root, env, "repro", f"preprocess@{WORKLOAD}")
    return root, env


def params_with(root: Path, marker: Path, where: str) -> str:
    """params.yaml with a shell command in ``where``; the stage name DVC makes of it."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    command = f"touch {marker}"
    if where == "compare":
        params["compare"] = [f"adam;{command}"]
        params["optimizers"][f"adam;{command}"] = {"learning_rate": 0.001}
        stage = f"train@{WORKLOAD}-adam;{command}-42"
    else:
        params["train"]["seeds"] = [f"42;{command}"]
        stage = f"train@mnist_cnn-adam-42;{command}"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return stage


@pytest.mark.parametrize("where", ["compare", "seed"])
def test_a_shell_command_in_params_is_never_run(prepared, tmp_path: Path, where: str) -> None:
    root, env = prepared
    good = (root / "params.yaml").read_text()
    marker = tmp_path / "ran"
    try:
        stage = params_with(root, marker, where)
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "-s", stage], cwd=root, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert not marker.exists(), f"the shell ran the params value:\n{output[-3000:]}"
        assert result.returncode != 0, output[-3000:]
        expected = "is not a valid name" if where == "compare" else "got seed '42;touch"
        assert expected in output, output[-3000:]
        # The stage alone, as DVC starts it.
        alone = subprocess.run(
            [sys.executable, "-m", "stages.train"], cwd=root, capture_output=True, text=True,
            env=env | {"DVC_STAGE": stage}, timeout=300,
        )  # fmt: skip
        assert alone.returncode == 1 and expected in alone.stderr, alone.stderr[-3000:]
        assert not marker.exists()
    finally:
        (root / "params.yaml").write_text(good)


def test_no_command_in_dvc_yaml_interpolates_a_value() -> None:
    """Every `${...}` of dvc.yaml is in a stage's name, params or deps, never in its cmd."""
    pipeline = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        cmd = stage.get("cmd") or stage["do"]["cmd"]
        assert "${" not in cmd, f"{name}: {cmd}"
