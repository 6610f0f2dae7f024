"""Loading params.yaml and the generic checks. Each section's bad values, as a user would
type them, are the rows of docs/errors.md (tests/test_errors_table.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mnist_optimizers import params
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.fit import TrainConfig, validate_train
from mnist_optimizers.model import validate_model
from mnist_optimizers.optimizers import build_optimizer, validate_compare
from mnist_optimizers.params import load_params
from stages.preprocess import PreprocessConfig, validate_preprocess

from .conftest import PROJECT_ROOT

DEFAULTS = load_params(PROJECT_ROOT / "params.yaml")


def test_project_params_are_valid_and_match_the_reference_setup() -> None:
    assert validate_train(DEFAULTS["train"]) == TrainConfig(
        epochs=5, batch_size=128, seeds=(42, 43, 44), precision="float32"
    )
    assert validate_preprocess(DEFAULTS["preprocess"]) == PreprocessConfig(0.1, None)
    model = validate_model(DEFAULTS["model"])
    assert model.conv_blocks == ((32, 64), (64,)) and model.dense_units == (128,)
    compared = validate_compare(DEFAULTS["compare"], DEFAULTS["optimizers"])
    assert {name: DEFAULTS["optimizers"][name]["learning_rate"] for name in compared} == {
        "sgd": 0.01,
        "adagrad": 0.001,
        "adam": 0.001,
        "rmsprop": 0.001,
    }


def test_the_catalog_holds_every_keras_optimizer_the_issue_names() -> None:
    classes = {type(build_optimizer(n, s)).__name__ for n, s in DEFAULTS["optimizers"].items()}
    assert classes >= {
        "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Nadam", "Adamax", "Adadelta",
        "Adafactor", "Ftrl", "Lion", "Lamb", "Muon",
    }  # fmt: skip


def test_load_params_reads_scientific_notation_as_float(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(
        text.replace("learning_rate: 0.01", "learning_rate: 1e-2")
    )
    assert load_params(tmp_path / "params.yaml")["optimizers"]["sgd"]["learning_rate"] == 0.01


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping of sections"),
        ("trian: {}", "unknown key(s) trian"),
    ],
)
def test_load_params_rejects_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(tmp_path / "params.yaml")


def test_load_params_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params.yaml: file not found"):
        load_params(tmp_path / "params.yaml")


def test_check_keys_names_unknown_and_missing_keys() -> None:
    params.check_keys({"a": 1}, ("a", "b"), "sec", required=("a",))
    with pytest.raises(ParamsError, match=r"^sec: unknown key\(s\) c; expected: a, b$"):
        params.check_keys({"a": 1, "c": 2}, ("a", "b"), "sec")
    with pytest.raises(ParamsError, match=r"^sec: missing key\(s\) b$"):
        params.check_keys({"a": 1}, ("a", "b"), "sec", required=("a", "b"))
    with pytest.raises(ParamsError, match=r"^sec: expected a mapping, got \[1\]$"):
        params.check_keys([1], ("a",), "sec")


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3", None])
def test_positive_int_refuses_what_is_not_a_count(value: object) -> None:
    with pytest.raises(
        ParamsError, match=f"^k: expected a positive integer, got {re.escape(repr(value))}$"
    ):
        params.positive_int(value, "k")
    assert params.positive_int(3, "k") == 3


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1", True, None])
def test_finite_number_refuses_nan_inf_and_text(value: object) -> None:
    with pytest.raises(ParamsError, match="^k: expected a finite number"):
        params.finite_number(value, "k")
    assert params.finite_number(2, "k") == 2.0
