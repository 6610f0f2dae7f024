"""The Keras backend as a setting (`train.backend`): params.yaml chooses it before Keras loads,
the unit tests hold on JAX as on TensorFlow, and `dvc exp run -S train.backend=jax` trains
every stage on JAX, its MLflow runs tagged with the backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import yaml

from mnist_optimizers import backend
from mnist_optimizers.errors import ParamsError

from .cli import dvc
from .conftest import PROJECT_ROOT, WORKLOAD, write_params
from .pipeline_runs import client_for, model_stages_run

# The tests that build, fit and log a model, and the NumPy update rules: on JAX too.
ON_BOTH = ["tests/test_model.py", "tests/test_optimizers.py", "tests/test_fit.py",
           "tests/test_update_rules.py", "tests/test_runtime.py", "tests/test_train.py::"
           "test_training_writes_outputs_and_logs_a_complete_mlflow_run"]  # fmt: skip
OTHER = {"tensorflow": "jax", "jax": "tensorflow"}


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="this run is the JAX one")
def test_the_model_fit_update_rule_and_stage_tests_pass_on_jax() -> None:
    """The same tests in a process whose Keras runs on JAX (tests/conftest.py reads
    $KERAS_BACKEND before any stage module loads)."""
    env = os.environ | {"KERAS_BACKEND": "jax"}
    command = [sys.executable, "-m", "pytest", "-n0", "-p", "no:cacheprovider", *ON_BOTH]
    try:
        done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        pytest.fail(f"the tests on JAX did not finish in 900 s:\n{str(exc.stdout)[-3000:]}")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "keras backend: jax" in done.stdout
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_params_choose_the_backend_before_keras_loads_over_keras_backend(tmp_path: Path) -> None:
    """A stage loads Keras through mnist_optimizers.quiet: on the backend params.yaml names;
    a $KERAS_BACKEND that says otherwise is named as ignored."""
    from .conftest import tiny_params

    for wanted in backend.BACKENDS:
        params = tiny_params({})
        params["train"]["backend"] = wanted
        write_params(tmp_path, params)
        code = ("import sys, mnist_optimizers.quiet, keras; "
                "print(keras.backend.backend(), 'tensorflow' in sys.modules)")  # fmt: skip
        env = os.environ | {"KERAS_BACKEND": OTHER[wanted], "PYTHONPATH": str(PROJECT_ROOT)}
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
        # On JAX, TensorFlow is not even loaded.
        assert done.stdout.split("\n")[-2] == f"{wanted} {wanted == 'tensorflow'}"
        assert f"train.backend is {wanted} in params.yaml; $KERAS_BACKEND={OTHER[wanted]} " \
            "is ignored" in done.stderr  # fmt: skip


def test_jax_missing_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    from .conftest import tiny_params

    params = tiny_params({})
    params["train"]["backend"] = "jax"
    write_params(tmp_path, params)
    code = "import sys; sys.modules['jax'] = None; import mnist_optimizers.quiet"  # not installed
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("train.backend: jax, but JAX is not installed here: pip "
                                   "install -r requirements.txt (jax[cpu]; requirements-gpu.txt: "
                                   "jax[cuda12])")  # fmt: skip


def test_a_stage_on_another_backend_than_its_params_stops_with_why() -> None:
    running = keras.backend.backend()
    assert backend.check(running) == running
    with pytest.raises(ParamsError, match=rf"^train.backend: {OTHER[running]}, but Keras "
                       rf"already runs on {running} in this process"):  # fmt: skip
        backend.check(OTHER[running])


@pytest.mark.e2e
@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the project's default backend")
def test_dvc_exp_run_on_jax_trains_every_stage_on_jax_and_tags_its_runs(workspace) -> None:
    """`dvc exp run -S train.backend=jax` from the reproduced (TensorFlow) project: every
    stage that runs Keras runs again on JAX, each MLflow run it starts is tagged `backend:
    jax`, and DVC records the param of each training stage."""
    root, env = workspace
    client = client_for(root)

    def all_runs() -> list:
        return client.search_runs([e.experiment_id for e in client.search_experiments()])

    before = {run.info.run_id for run in all_runs()}
    output = dvc(root, env, "exp", "run", "-n", "on-jax", "-S", "train.backend=jax",
                 "-S", "compare=[adam]")  # fmt: skip
    ran = set(model_stages_run(output))
    training = {f"train@{WORKLOAD}-adam-42", f"tune@{WORKLOAD}-adam", "gd_variants",
                f"train_tuned@{WORKLOAD}-adam-42", f"evaluate@{WORKLOAD}"}  # fmt: skip
    assert training <= ran, ran
    assert f"train@{WORKLOAD}-adam-42: training on CPU (" in output and " with jax in " in output
    new = [run for run in all_runs() if run.info.run_id not in before]
    stages = {run.data.tags.get("dvc.stage") for run in new}
    assert {f"train@{WORKLOAD}-adam-42", f"tune@{WORKLOAD}-adam", "gd_variants"} <= stages
    trained = [run for run in new if run.data.tags.get("dvc.stage", "").startswith(
        ("train@", "train_tuned@", "tune@", "gd_variants"))]  # fmt: skip
    assert trained and {run.data.tags.get("backend") for run in trained} == {"jax"}
    logged = [run.data.params["train.backend"] for run in trained if "train.backend" in
              run.data.params]  # fmt: skip
    assert logged and set(logged) == {"jax"}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]  # DVC's record of each
    assert {lock[stage]["params"]["params.yaml"]["train.backend"] for stage in training} == {"jax"}
    metrics = json.loads((root / "metrics" / "train" / WORKLOAD / "adam-42.json").read_text())
    assert metrics["threads"]["inter_op"] == 0  # XLA's pool: sized by the affinity alone
