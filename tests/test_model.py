"""The CNN: the reference architecture, its test metrics on known predictions, and loading
a model file safely."""

from __future__ import annotations

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from mnist_optimizers import architecture, model
from mnist_optimizers.errors import ParamsError, PipelineError
from mnist_optimizers.architecture import validate_model
from mnist_optimizers.model import build_model, evaluate_model, load_model
from mnist_optimizers.params import load_params

from .conftest import PROJECT_ROOT


def test_model_is_the_reference_cnn() -> None:
    model = build_model(
        validate_model(load_params(PROJECT_ROOT / "params.yaml")["workloads"]["mnist_cnn"]["model"]), (28, 28, 1)
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


class FixedModel:
    """Stands in for a Keras model: predict() returns the given probabilities."""

    input_shape = (None, 28, 28, 1)
    output_shape = (None, 10)

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities
        self.batch_sizes: list[int] = []

    def predict(self, x: np.ndarray, batch_size: int, verbose: int = 0) -> np.ndarray:
        self.batch_sizes.append(batch_size)
        return self.probabilities


def one_hot_ish(predicted: list[int], confidence: float = 0.91) -> np.ndarray:
    rest = (1 - confidence) / 9
    probabilities = np.full((len(predicted), 10), rest, np.float32)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_metrics_on_known_predictions() -> None:
    y = np.array([0, 0, 1, 2, 2, 2], np.uint8)
    predicted = [0, 1, 1, 2, 2, 0]  # 4 of 6 right
    model = FixedModel(one_hot_ish(predicted))
    result = evaluate_model(model, np.zeros((6, 28, 28, 1), np.float32), y, batch_size=5000)
    assert model.batch_sizes == [5000]
    assert result.test_accuracy == pytest.approx(4 / 6)
    rest = 0.09 / 9
    expected_loss = -(4 * math.log(0.91) + 2 * math.log(rest)) / 6
    assert result.test_loss == pytest.approx(expected_loss, rel=1e-4)
    assert result.confusion[0].tolist()[:3] == [1, 1, 0]
    assert result.confusion[2].tolist()[:3] == [1, 0, 2]
    assert result.confusion.sum() == 6
    np.testing.assert_allclose(result.per_class_accuracy[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(result.per_class_accuracy[3])  # no test image of digit 3


def test_a_model_file_holding_code_is_refused_not_run(tmp_path: Path) -> None:
    """Keras' safe mode: a Lambda layer's Python function in a model file never runs."""
    marker = tmp_path / "code-ran"
    code = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(eval(code))])  # noqa: S307
    path = tmp_path / "adam-42.keras"
    model.save(path)
    marker.unlink()  # building the model ran it once, here, in the test
    with pytest.raises(PipelineError, match="refused: it holds Python code"):
        load_model(path)
    assert not marker.exists()


def test_a_model_for_other_data_is_refused_before_predicting() -> None:
    model = FixedModel(one_hot_ish([0, 1]))
    y = np.array([0, 11], np.uint8)
    with pytest.raises(
        PipelineError,
        match=r"models/x.keras: takes images of shape \(28, 28, 1\) "
        r"into 10 classes; the test set has \(28, 28, 1\), labels up to 11",
    ):
        evaluate_model(model, np.zeros((2, 28, 28, 1), np.float32), y, 5000, "models/x.keras")
    assert model.batch_sizes == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a Keras model file (damaged or cut short)"),
        (b"garbage" * 100, "not a Keras model file (damaged or cut short)"),
        (None, "not a Keras model file"),  # a real model file, cut in half
    ],
)
def test_a_damaged_model_file_is_named_with_the_stage_that_rewrites_it(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "mnist_cnn" / "adam-42-tuned.keras"  # as paths.model_file names it
    path.parent.mkdir()
    if content is None:
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(PipelineError) as error:
        load_model(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert str(error.value).endswith("retrain it: dvc repro --force train_tuned@mnist_cnn-adam-42")


@pytest.mark.parametrize(
    "change",
    [{}, {"conv_blocks": [[8], [16, 16]], "dense_units": [8]},
     {"conv_blocks": [[8], [16]], "kernel_size": 5, "dense_units": [32, 16], "num_classes": 12},
     {"conv_blocks": [], "dense_units": [1000, 500, 100]},
     {"conv_blocks": [], "dense_units": []}],
    ids=["reference", "three-convs", "wider-kernel", "mlp", "logistic-regression"],
)  # fmt: skip
def test_the_parameter_count_is_what_keras_builds(change: dict) -> None:
    config = validate_model(load_params(PROJECT_ROOT / "params.yaml")["workloads"]["mnist_cnn"]["model"] | change)
    counts = architecture.parameter_counts(config, (28, 28))
    assert sum(counts.values()) == build_model(config, (28, 28, 1)).count_params()


@pytest.mark.parametrize(
    ("blocks", "dense", "key"),
    [([[32]], [100_000_000], "model.dense_units[0]"),
     ([[32], [400_000]], [128], "model.dense_units[0]"),
     ([[32, 50_000, 50_000]], [], "model.conv_blocks[0][2]")],
    ids=["dense", "wide-conv-feeds-dense", "conv"],
)  # fmt: skip
def test_a_model_too_large_to_train_is_refused_before_keras_builds_it(
    blocks: list, dense: list, key: str
) -> None:
    """The key that holds the most parameters is named, with the size; the machine's
    memory is the bound (here 8 GiB)."""
    config = model.ModelConfig(tuple(map(tuple, blocks)), 3, 2, tuple(dense), 10)
    with pytest.raises(ParamsError, match=re.escape(key) + r": the model has [\d,]+ param"):
        architecture.check_size(config, (28, 28), memory=8 << 30)
    section = load_params(PROJECT_ROOT / "params.yaml")["workloads"]["mnist_cnn"]["model"] | {"dense_units": [10**9]}
    with pytest.raises(ParamsError, match="GiB to train, more than this machine's"):
        validate_model(section)  # on any machine: 15 TiB to train


def test_without_conv_blocks_an_mlp_and_without_dense_units_a_logistic_regression() -> None:
    section = load_params(PROJECT_ROOT / "params.yaml")["workloads"]["mnist_cnn"]["model"]
    mlp_config = validate_model(section | {"conv_blocks": [], "dense_units": [1000, 500, 100]})
    mlp = build_model(mlp_config, (28, 28, 1))
    assert [type(layer).__name__ for layer in mlp.layers] == ["Flatten"] + ["Dense"] * 4
    assert mlp.count_params() == 785 * 1000 + 1001 * 500 + 501 * 100 + 101 * 10  # DeepOBS'
    logreg_config = validate_model(section | {"conv_blocks": [], "dense_units": []})
    logreg = build_model(logreg_config, (28, 28, 1))
    assert [type(layer).__name__ for layer in logreg.layers] == ["Flatten", "Dense"]
    assert logreg.count_params() == 785 * 10
