"""Stage `train`: optimizers by name, the CNN, a tracked and deterministic training run."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from stages import runtime, train
from stages.common import (
    HISTORY_DIR,
    MODELS_DIR,
    TRAIN_METRICS_DIR,
    ParamsError,
    load_params,
    validate_model,
)
from stages.tracking import TrackingError

from .conftest import PROJECT_ROOT


@pytest.fixture(autouse=True)
def fresh_keras_session():
    keras.backend.clear_session()
    yield
    mlflow.end_run()


@pytest.mark.parametrize(
    ("name", "spec", "cls", "learning_rate"),
    [
        ("sgd", {"learning_rate": 0.01}, "SGD", 0.01),
        ("Adam", {}, "Adam", 0.001),
        ("RMSPROP", {"learning_rate": 0.002}, "RMSprop", 0.002),
        ("sgd_momentum", {"class": "SGD", "learning_rate": 0.05, "momentum": 0.9}, "SGD", 0.05),
    ],
)
def test_optimizers_are_built_by_name_or_class(
    name: str, spec: dict, cls: str, learning_rate: float
) -> None:
    optimizer = train.build_optimizer(name, spec)
    assert type(optimizer).__name__ == cls
    assert math.isclose(float(optimizer.learning_rate), learning_rate, rel_tol=1e-6)


def test_class_key_sets_every_hyperparameter() -> None:
    optimizer = train.build_optimizer(
        "nesterov", {"class": "sgd", "momentum": 0.9, "nesterov": True}
    )
    assert optimizer.get_config()["momentum"] == 0.9 and optimizer.get_config()["nesterov"] is True


@pytest.mark.parametrize("class_name", sorted(train.optimizer_classes()))
def test_every_keras_optimizer_works_from_params_alone(class_name: str) -> None:
    optimizer = train.build_optimizer(f"my_{class_name.lower()}", {"class": class_name})
    assert type(optimizer).__name__ == class_name


CATALOG = load_params(PROJECT_ROOT / "params.yaml")["optimizers"]


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_entry_trains_the_reference_cnn(name: str) -> None:
    """Each entry of params.yaml's catalog takes real steps on the reference model: finite
    loss, every trainable weight moved."""
    keras.utils.set_random_seed(0)
    model = train.build_model(
        validate_model(load_params(PROJECT_ROOT / "params.yaml")["model"]), (28, 28, 1)
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    optimizer = train.build_optimizer(name, CATALOG[name])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(moved), f"{name}: weights left unchanged: {moved}"
    keras.backend.clear_session()


BAD_OPTIMIZERS = [
    (
        "adamm",
        {},
        "optimizers.adamm: 'adamm' is not a Keras optimizer; valid names: Adadelta, Adafactor, Adagrad, Adam, AdamW",
    ),
    (
        "fast",
        {"class": "Turbo"},
        "optimizers.fast.class: 'Turbo' is not a Keras optimizer; valid names:",
    ),
    (
        "adam",
        {"learning_rte": 0.001},
        "optimizers.adam.learning_rte: Adam takes no argument 'learning_rte'; it takes: learning_rate, beta_1",
    ),
    (
        "adagrad",
        {"momentum": 0.9},
        "optimizers.adagrad.momentum: Adagrad takes no argument 'momentum'",
    ),
    (
        "adam",
        {"learning_rate": "1e-3x"},
        "optimizers.adam.learning_rate: expected a number, got '1e-3x'",
    ),
    (
        "adam",
        {"learning_rate": float("nan")},
        "optimizers.adam.learning_rate: expected a finite number, got nan",
    ),
    ("adam", {"learning_rate": -0.001}, "optimizers.adam.learning_rate: expected > 0, got -0.001"),
    ("adam", {"learning_rate": 0}, "optimizers.adam.learning_rate: expected > 0, got 0"),
    (
        "sgd",
        {"momentum": 2.0},
        "optimizers.sgd: SGD rejected {'momentum': 2.0}: `momentum` must be a float between [0, 1].",
    ),
    ("adam", {"beta_1": "high"}, "optimizers.adam.beta_1: expected a number, got 'high'"),
]


@pytest.mark.parametrize(("name", "spec", "message"), BAD_OPTIMIZERS)
def test_bad_optimizer_entries_give_one_clear_message(name: str, spec: dict, message: str) -> None:
    with pytest.raises(ParamsError) as error:
        train.build_optimizer(name, spec)
    assert str(error.value).startswith(message)


def test_model_is_the_reference_cnn() -> None:
    model = train.build_model(
        validate_model(load_params(PROJECT_ROOT / "params.yaml")["model"]), (28, 28, 1)
    )
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Conv2D",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [32, 64, 64]
    # 320 + 18,496 + 36,928 (convs) + 204,928 + 1,290 (dense), counted by hand.
    assert model.count_params() == 261_962
    assert model.output_shape == (None, 10)


def run_train(name: str, seed: int = 42) -> dict:
    train.main([name, str(seed)])
    return json.loads((TRAIN_METRICS_DIR / f"{name}-{seed}.json").read_text())


def test_training_writes_outputs_and_logs_a_complete_mlflow_run(processed: Path) -> None:
    metrics = run_train("adam")
    history = pd.read_csv(HISTORY_DIR / "adam-42.csv")
    assert list(history.columns) == list(train.HISTORY_FIELDS) and list(history["epoch"]) == [1]
    assert metrics["val_accuracy"] == pytest.approx(history["val_accuracy"].iloc[-1])
    model = keras.saving.load_model(MODELS_DIR / "adam-42.keras")
    assert model.count_params() == 261_962

    client = mlflow.MlflowClient()
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.run_name == "adam-42" and run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "mnist-optimizers"
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
    assert run.data.tags["dvc.stage"] == "train@adam-42"
    assert run.data.tags["optimizer"] == "adam" and run.data.tags["seed"] == "42"
    # The thread counts change the weights' last bits: both the run and the metrics say them.
    cores = runtime.available_cores()
    assert metrics["threads"] == {"intra_op": cores, "inter_op": 1}
    assert params["runtime.intra_op_threads"] == str(cores)

    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert logged.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28, 1)
    x_val = np.load("data/processed/x_val.npy")
    np.testing.assert_allclose(
        logged.predict(x_val[:3]), model.predict(x_val[:3], verbose=0), rtol=1e-5
    )
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
    assert (local / "input_example.json").exists()


def test_same_params_give_identical_results(processed: Path) -> None:
    run_train("sgd")
    first = pd.read_csv(HISTORY_DIR / "sgd-42.csv")
    keras.backend.clear_session()
    run_train("sgd")
    second = pd.read_csv(HISTORY_DIR / "sgd-42.csv")
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(first[columns], second[columns], check_exact=True)


def test_each_seed_is_its_own_run(processed: Path) -> None:
    Path("params.yaml").write_text(
        Path("params.yaml").read_text().replace("seeds:\n  - 42\n", "seeds:\n  - 42\n  - 7\n")
    )
    run_train("sgd", 42)
    keras.backend.clear_session()
    run_train("sgd", 7)
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert not pd.read_csv(HISTORY_DIR / "sgd-42.csv")[columns].equals(
        pd.read_csv(HISTORY_DIR / "sgd-7.csv")[columns]
    )
    with pytest.raises(ParamsError, match=r"train.seeds: 8 is not one of \[42, 7\]"):
        train.main(["sgd", "8"])
    with pytest.raises(ParamsError, match="usage: python -m stages.train"):
        train.main(["sgd"])


def test_experiment_name_comes_from_params_or_the_environment(processed: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    metrics = run_train("sgd")
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert mlflow.MlflowClient().get_experiment(run.info.experiment_id).name == "elsewhere"
    assert run.data.tags["dvc.experiment"] == "lr-sweep-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_before_training(processed: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        TrackingError, match="is unreachable .*unset it to log to the local store mlflow.db"
    ):
        train.main(["adam", "42"])
    assert not MODELS_DIR.exists() and not TRAIN_METRICS_DIR.exists()


def test_bad_params_fail_before_loading_any_data(project: Path) -> None:
    # No data/processed exists: the params error must come first.
    with pytest.raises(
        ParamsError, match="optimizers.nosuch: no such entry; entries: sgd, sgd_momentum, "
    ):
        train.main(["nosuch", "42"])
    params_text = (
        Path("params.yaml").read_text().replace("learning_rate: 0.001", "learning_rate: 1e-3x", 1)
    )
    Path("params.yaml").write_text(params_text)
    with pytest.raises(
        ParamsError, match="optimizers.adagrad.learning_rate: expected a number, got '1e-3x'"
    ):
        train.main(["adagrad", "42"])


def test_mixed_bfloat16_falls_back_to_float32_without_bf16_instructions(
    monkeypatch, caplog
) -> None:
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind=None: [])
    assert train.effective_precision("mixed_bfloat16") == "float32"
    assert "this one has none; training in float32 instead" in caplog.text
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    assert train.effective_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert train.effective_precision("float32") == "float32"


def test_mixed_bfloat16_trains_in_bf16_with_a_float32_softmax(processed: Path, monkeypatch) -> None:
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    params_text = (
        Path("params.yaml").read_text().replace("precision: float32", "precision: mixed_bfloat16")
    )
    Path("params.yaml").write_text(params_text)
    try:
        metrics = run_train("adam")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert metrics["precision"] == "mixed_bfloat16"
    model = keras.saving.load_model(MODELS_DIR / "adam-42.keras")
    assert model.layers[0].compute_dtype == "bfloat16" and model.layers[0].dtype == "float32"
    assert model.layers[-1].compute_dtype == "float32"
    run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.data.params["train.precision"] == "mixed_bfloat16"
    assert run.data.params["train.effective_precision"] == "mixed_bfloat16"


def test_metrics_file_says_where_the_stage_time_went(processed: Path) -> None:
    metrics = run_train("sgd")
    seconds = metrics["seconds"]
    assert set(seconds) == {"load_data", "mlflow_logging", "fit", "save_model"}
    assert all(value > 0 for value in seconds.values())
    assert metrics["train_seconds"] == pytest.approx(seconds["fit"], abs=0.01)
