"""Stage `train`: a tracked, deterministic training run and the files it writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from mnist_optimizers import fit, runtime
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.paths import HISTORY_DIR, MODELS_DIR, TRAIN_METRICS_DIR
from mnist_optimizers.mlflow_store import TrackingError
from stages import train

from .conftest import WORKLOAD, edit_params
from .servers import free_port


@pytest.fixture(autouse=True)
def fresh_keras_session():
    keras.backend.clear_session()
    yield
    mlflow.end_run()


def run_train(name: str, seed: int = 42) -> dict:
    train.main([WORKLOAD, name, str(seed)])
    return json.loads((TRAIN_METRICS_DIR / WORKLOAD / f"{name}-{seed}.json").read_text())


def test_training_writes_outputs_and_logs_a_complete_mlflow_run(processed: Path) -> None:
    metrics = run_train("adam")
    history = pd.read_csv(HISTORY_DIR / WORKLOAD / "adam-42.csv")
    assert list(history.columns) == list(fit.HISTORY_FIELDS) and list(history["epoch"]) == [1]
    assert metrics["val_accuracy"] == pytest.approx(history["val_accuracy"].iloc[-1])
    model = keras.saving.load_model(MODELS_DIR / WORKLOAD / "adam-42.keras")
    assert model.count_params() == 261_962

    client = mlflow.MlflowClient()
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.run_name == f"{WORKLOAD}/adam-42" and run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "mnist-optimizers"
    # MLflow's UI opens a model-training experiment on its runs, not on the GenAI overview.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The data the run saw, in the UI's Dataset column: name, digest, source, context.
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}  # context -> dataset
    assert sorted(inputs) == ["training", "validation"]
    assert inputs["training"].name == "mnist-train-180" and len(inputs["training"].digest) == 16
    assert inputs["validation"].name == "mnist-val-20"
    assert json.loads(inputs["training"].source)["uri"].endswith("data/processed/mnist_cnn/x_train.npy")
    assert json.loads(inputs["training"].profile)["features_shape"] == [180, 28, 28, 1]
    params = run.data.params
    assert params["optimizer.class"] == "Adam"
    assert params["optimizer.learning_rate"] == "0.001"
    assert (
        params["optimizer.beta_2"] == "0.999"
    )  # a Keras default, logged though not in params.yaml
    assert (
        params["train.epochs"] == "1"
        and params["train.batch_size"] == "32"
        and params["train.seed"] == "42"
    )
    assert params["model.conv_blocks"] == "((32, 64), (64,))"
    assert (
        params["data.train_images"] == "180"
        and len(params["data.sha256.train-images-idx3-ubyte.gz"]) == 64
    )
    val_history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in val_history] == [(1, pytest.approx(metrics["val_accuracy"]))]
    assert {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "epoch_seconds",
        "train_seconds",
    } <= set(run.data.metrics)
    assert run.data.tags["dvc.stage"] == "train@mnist_cnn-adam-42"
    assert run.data.tags["optimizer"] == "adam" and run.data.tags["seed"] == "42"
    # The backend it trained on: a tag to filter by in the UI, and a param of its configuration.
    assert run.data.tags["backend"] == params["train.backend"] == keras.backend.backend()
    # The thread counts change the weights' last bits: both the run and the metrics say them.
    cores = runtime.available_cores()
    inter_op = 1 if keras.backend.backend() == "tensorflow" else 0  # XLA has no such pool
    assert metrics["threads"] == {"intra_op": cores, "inter_op": inter_op}
    assert params["runtime.intra_op_threads"] == str(cores)

    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert logged.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28, 1)
    x_val = np.load("data/processed/mnist_cnn/x_val.npy")
    np.testing.assert_allclose(
        logged.predict(x_val[:3]), model.predict(x_val[:3], verbose=0), rtol=1e-5
    )
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
    assert (local / "input_example.json").exists()


def test_same_params_give_identical_results(processed: Path) -> None:
    run_train("sgd")
    first = pd.read_csv(HISTORY_DIR / WORKLOAD / "sgd-42.csv")
    keras.backend.clear_session()
    run_train("sgd")
    second = pd.read_csv(HISTORY_DIR / WORKLOAD / "sgd-42.csv")
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(first[columns], second[columns], check_exact=True)


def test_each_seed_is_its_own_run(processed: Path) -> None:
    edit_params({"train.seeds": [42, 7]})
    run_train("sgd", 42)
    keras.backend.clear_session()
    run_train("sgd", 7)
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert not pd.read_csv(HISTORY_DIR / WORKLOAD / "sgd-42.csv")[columns].equals(
        pd.read_csv(HISTORY_DIR / WORKLOAD / "sgd-7.csv")[columns]
    )
    with pytest.raises(ParamsError, match=r"train.seeds: 8 is not one of \[42, 7\]"):
        train.main([WORKLOAD, "sgd", "8"])
    with pytest.raises(ParamsError, match="usage: python -m stages.train"):
        train.main([WORKLOAD, "sgd"])


def test_experiment_name_comes_from_params_or_the_environment(processed: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    metrics = run_train("sgd")
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert mlflow.MlflowClient().get_experiment(run.info.experiment_id).name == "elsewhere"
    assert run.data.tags["dvc.experiment"] == "lr-sweep-1"


@pytest.mark.parametrize(
    ("name", "message"),
    [(" ", "expected a non-empty string, got ' '"), ("\t\n", "expected a non-empty string"),
     (" adam runs", "' adam runs' begins or ends with a space"),
     ("runs\x00x", "holds a control or invisible character (U+0000)"),
     ("runs\nmore", "(U+000A)"), ("\u200fruns", "(U+200F)"), ("a\u200bb", "(U+200B)")],
    ids=["blank", "whitespace", "edge-space", "nul", "newline", "rtl-mark", "zero-width"],
)  # fmt: skip
def test_an_experiment_name_a_person_cannot_read_is_refused(
    project: Path, monkeypatch, name: str, message: str
) -> None:
    """In params.yaml and in $MLFLOW_EXPERIMENT_NAME: before any experiment is made."""
    from mnist_optimizers import mlflow_store

    with pytest.raises(ParamsError, match="^mlflow.experiment_name: .*" + re.escape(message)):
        mlflow_store.validate_mlflow({"experiment_name": name})
    if "\x00" in name:
        return  # no environment variable holds a NUL
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    with pytest.raises(ParamsError, match=r"^\$MLFLOW_EXPERIMENT_NAME: .*" + re.escape(message)):
        mlflow_store.setup_experiment("mnist-optimizers")
    assert not (project / "mlflow.db").exists()  # refused before the store was opened


@pytest.mark.parametrize(
    "change",
    [pytest.param({"optimizers.sgd.learning_rate": 1e6}, id="lr-1e6", marks=pytest.mark.skipif(
        keras.backend.backend() == "jax", reason="on JAX this loss saturates at the clipped "
        "cross-entropy (about 15) and stays finite: a bad result, not a divergence")),
     pytest.param({"optimizers.sgd.learning_rate": 1e30}, id="lr-1e30")],
)  # fmt: skip
def test_a_run_whose_loss_went_nan_is_recorded_as_diverged_not_as_a_result(
    processed: Path, change: dict
) -> None:
    """The stage succeeds (the pipeline goes on), stops at the epoch the loss went NaN or
    infinite, writes no number as its result, and its MLflow run ends FAILED, tagged."""
    edit_params(change | {"train.epochs": 3})
    metrics = run_train("sgd")
    assert metrics["diverged"] is True and metrics["diverged_at_epoch"] == 1
    assert [metrics[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")] == [None] * 4
    history = pd.read_csv(HISTORY_DIR / WORKLOAD / "sgd-42.csv")
    assert list(history["epoch"]) == [1]  # no epoch trained after it diverged
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["pipeline.diverged"] == "loss not finite at epoch 1"
    assert (MODELS_DIR / WORKLOAD / "sgd-42.keras").exists()  # DVC's output, marked by its metrics


def test_unreachable_tracking_server_fails_before_training(processed: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        TrackingError, match="is unreachable .*unset it to log to the local store mlflow.db"
    ):
        train.main([WORKLOAD, "adam", "42"])
    assert not MODELS_DIR.exists() and not TRAIN_METRICS_DIR.exists()


def test_bad_params_fail_before_loading_any_data(project: Path) -> None:
    # No data/processed exists: the params error must come first.
    with pytest.raises(
        ParamsError, match="optimizers.nosuch: no such entry; entries: sgd, sgd_momentum, "
    ):
        train.main([WORKLOAD, "nosuch", "42"])
    edit_params({"optimizers.adagrad.learning_rate": "1e-3x"})
    with pytest.raises(
        ParamsError, match="optimizers.adagrad.learning_rate: expected a number, got '1e-3x'"
    ):
        train.main([WORKLOAD, "adagrad", "42"])


def test_mixed_bfloat16_trains_in_bf16_with_a_float32_softmax(processed: Path, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    edit_params({"train.precision": "mixed_bfloat16"})
    try:
        metrics = run_train("adam")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert metrics["precision"] == "mixed_bfloat16"
    model = keras.saving.load_model(MODELS_DIR / WORKLOAD / "adam-42.keras")
    assert model.layers[0].compute_dtype == "bfloat16" and model.layers[0].dtype == "float32"
    assert model.layers[-1].compute_dtype == "float32"
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.data.params["train.precision"] == "mixed_bfloat16"
    assert run.data.params["train.effective_precision"] == "mixed_bfloat16"
    assert run.data.tags["train.device"] == f"CPU ({runtime.cpu_name()})"  # where it trained: this machine has no GPU


def test_metrics_file_says_where_the_stage_time_went(processed: Path) -> None:
    metrics = run_train("sgd")
    seconds = metrics["seconds"]
    assert set(seconds) == {"load_data", "mlflow_logging", "fit", "save_model"}
    assert all(value > 0 for value in seconds.values())
    assert metrics["train_seconds"] == pytest.approx(seconds["fit"], abs=0.01)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("foo://x", "MLFLOW_TRACKING_URI: 'foo://x' is not a tracking store MLflow knows; use "),
        ("sqlite:///{root}/damaged.db",
         "MLflow tracking store {root}/damaged.db: file is not a database; it is damaged: move "
         "it away to start a new store, or restore a backup"),
    ],
)  # fmt: skip
def test_a_store_mlflow_cannot_use_is_named_before_training(
    processed: Path, monkeypatch: pytest.MonkeyPatch, uri: str, message: str
) -> None:
    (processed / "damaged.db").write_bytes(b"not a database " * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(root=processed))
    with pytest.raises(TrackingError) as error:
        train.main([WORKLOAD, "adam", "42"])
    assert str(error.value).startswith(message.format(root=processed))
    assert not MODELS_DIR.exists() and not TRAIN_METRICS_DIR.exists()


def test_an_experiment_deleted_in_the_ui_is_named_with_how_to_restore_it(processed: Path) -> None:
    from mnist_optimizers import mlflow_store

    client = mlflow.MlflowClient(mlflow_store.connect())
    experiment_id = client.create_experiment("mnist-optimizers")
    client.delete_experiment(experiment_id)
    with pytest.raises(TrackingError) as error:
        train.main([WORKLOAD, "adam", "42"])
    assert str(error.value) == (
        f"MLflow experiment 'mnist-optimizers' (id {experiment_id}) is deleted: restore it "
        f"(mlflow experiments restore --experiment-id {experiment_id}, or in the UI), or set "
        "mlflow.experiment_name in params.yaml to a new name"
    )
    assert not MODELS_DIR.exists()


def write_tune_result(name: str, rate: float) -> None:
    """metrics/tuned/<workload>/<name>.json as the search writes it, choosing ``rate``."""
    path = Path("metrics/tuned") / WORKLOAD / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"optimizer": name, "learning_rate": rate}))


def test_a_tuned_rate_equal_to_the_default_reuses_the_default_run(processed: Path) -> None:
    """The search kept Adam's default rate: train_tuned trains nothing; its files are the
    default run's, and the one MLflow run is found by both settings' filters."""
    default = run_train("adam")
    write_tune_result("adam", 0.001)
    keras.backend.clear_session()
    train.main([WORKLOAD, "adam", "42", "--tuned"])

    tuned = json.loads((TRAIN_METRICS_DIR / WORKLOAD / "adam-42-tuned.json").read_text())
    assert tuned == default | {"reused": "adam-42"}
    assert len(default["configuration"]) == 64
    for folder, suffix in ((MODELS_DIR, ".keras"), (HISTORY_DIR, ".csv")):
        tuned_file = (folder / WORKLOAD / f"adam-42-tuned{suffix}").read_bytes()
        assert tuned_file == (folder / WORKLOAD / f"adam-42{suffix}").read_bytes()
    client = mlflow.MlflowClient()
    (run,) = client.search_runs(client.get_experiment_by_name("mnist-optimizers").experiment_id)
    assert run.info.run_id == default["mlflow_run_id"]
    assert run.data.tags["default_setting"] == run.data.tags["tuned_setting"] == "true"
    assert run.data.tags["configuration"] == default["configuration"]


def test_a_tuned_rate_that_differs_trains_its_own_run(processed: Path) -> None:
    default = run_train("adam")
    write_tune_result("adam", 0.01)
    keras.backend.clear_session()
    train.main([WORKLOAD, "adam", "42", "--tuned"])

    tuned = json.loads((TRAIN_METRICS_DIR / WORKLOAD / "adam-42-tuned.json").read_text())
    assert "reused" not in tuned and tuned["learning_rate"] == pytest.approx(0.01)
    assert tuned["mlflow_run_id"] != default["mlflow_run_id"]
    assert tuned["configuration"] != default["configuration"]
    client = mlflow.MlflowClient()
    run = client.get_run(tuned["mlflow_run_id"])
    assert (run.data.tags["default_setting"], run.data.tags["tuned_setting"]) == ("false", "true")
    default_run = client.get_run(default["mlflow_run_id"])
    assert default_run.data.tags["tuned_setting"] == "false"


def test_the_configuration_id_ignores_what_does_not_change_the_result(processed: Path) -> None:
    """The seed list, checkpointing, the precision asked for (when the same one is used) and
    the optimizer's name in params.yaml do not make another configuration; a seed does."""
    base = {"optimizer": "adam", "optimizer.class": "Adam", "optimizer.learning_rate": 0.001,
            "train.seeds": (42,), "train.resume": False, "train.precision": "float32",
            "train.effective_precision": "float32", "train.seed": 42}  # fmt: skip
    same = base | {"optimizer": "my_adam", "train.seeds": (42, 43), "train.resume": True,
                   "train.precision": "auto"}  # fmt: skip
    assert fit.configuration_id(same) == fit.configuration_id(base)
    for change in ({"train.seed": 43}, {"optimizer.learning_rate": 0.00100001},
                   {"train.effective_precision": "mixed_bfloat16"}):  # fmt: skip
        assert fit.configuration_id(base | change) != fit.configuration_id(base)


def test_stages_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Two stages at once (`dvc queue start -j 2`), or a stage and a test's client, may open a
    store that does not exist yet. MLflow's table creation fails when run twice at once ("table
    ... already exists"; without the store's lock 7 of 9 such openings failed here), so the
    first takes the lock beside the store and the others wait for it."""
    import subprocess
    import sys

    from . import servers

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "from mnist_optimizers import mlflow_logs, mlflow_store; mlflow_store.connect()"
    env = servers.tool_env({"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(servers.PROJECT_ROOT)})
    openers = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        errors = [opener.communicate(timeout=120)[1] for opener in openers]
    finally:
        for opener in openers:
            opener.kill()
    assert [opener.returncode for opener in openers] == [0, 0, 0], "\n".join(errors)[-3000:]
    assert mlflow.MlflowClient(uri).search_experiments()  # one usable store, Default inside


OWN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [\w.]+ (INFO|WARNING|ERROR) ")


def stage_output(*command: str) -> list[str]:
    """The lines a stage run as DVC runs it (`python -m stages.<name> ...`, stdout not a
    terminal) prints on stdout and stderr together; TF_CPP_MIN_LOG_LEVEL left to the stage."""
    import subprocess
    import sys

    from . import servers

    env = os.environ | {"PYTHONPATH": str(servers.PROJECT_ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout.splitlines()


def test_a_training_stage_prints_only_its_own_lines(processed: Path) -> None:
    """What `dvc repro` shows of a training stage: its own log lines (the threads, the device
    and precision, one line per epoch, the result), none of TensorFlow's start-up lines, Keras' progress bars, or
    MLflow's notices; a new MLflow store included. Before mnist_optimizers.quiet this stage
    printed 16 lines of others' here (absl, oneDNN, cpu_feature_guard, MLflow's new store,
    Keras' epoch lines and progress bars, NodeDef) around its own 4."""
    edit_params({"train.epochs": 2})
    lines = stage_output("stages.train", WORKLOAD, "adam", "42")
    assert [line for line in lines if not OWN_LINE.match(line)] == []
    assert sum(" mnist_optimizers.fit INFO epoch " in line for line in lines) == 2
    assert "train@mnist_cnn-adam-42: training on CPU (" in lines[1]
    assert "train@mnist_cnn-adam-42: val_accuracy" in lines[-1]
    assert len(lines) == 5, lines  # the threads, the device, 2 epochs, the result


def test_a_search_prints_one_line_per_trial_and_no_progress_bars(processed: Path) -> None:
    """The search clears Keras' session before each trial, which turns Keras' interactive
    logging back on: its fits are quiet off a terminal all the same."""
    lines = stage_output("stages.tune", WORKLOAD, "adam")
    assert [line for line in lines if not OWN_LINE.match(line)] == []
    assert sum("INFO tune@mnist_cnn-adam: lr=" in line for line in lines) == 3  # tune.points
    assert "best lr=" in lines[-1]


def test_a_dataset_logged_by_two_stages_at_once_is_logged_again(monkeypatch) -> None:
    """Two queued stages logged one dataset at once to the tracking server, and one failed
    with PostgreSQL's UniqueViolation (CI): the second try finds the dataset and succeeds."""
    from mlflow.exceptions import MlflowException

    from mnist_optimizers import mlflow_logs

    calls = []

    def log_once_failing(inputs, run_id):
        calls.append(run_id)
        if len(calls) == 1:
            raise MlflowException("(psycopg.errors.UniqueViolation) duplicate key value")

    monkeypatch.setattr(mlflow_logs, "_log_datasets", log_once_failing)
    mlflow_logs.log_datasets([], "run")
    assert calls == ["run", "run"]
    calls.clear()
    monkeypatch.setattr(mlflow_logs, "_log_datasets", lambda *_: (_ for _ in ()).throw(MlflowException("other"))
    )
    with pytest.raises(MlflowException, match="other"):
        mlflow_logs.log_datasets([], "run")
