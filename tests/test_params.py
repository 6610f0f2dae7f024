"""Loading params.yaml and the generic checks. Each section's bad values, as a user would
type them, are the rows of docs/errors.md (tests/test_errors_table.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mnist_optimizers import params
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.fit import TrainConfig, validate_train
from mnist_optimizers.architecture import validate_model
from mnist_optimizers.optimizers import build_optimizer, validate_compare
from mnist_optimizers.params import load_params
from mnist_optimizers.sections.preprocess import PreprocessConfig, validate_preprocess

from .conftest import PROJECT_ROOT

DEFAULTS = load_params(PROJECT_ROOT / "params.yaml")


def test_project_params_are_valid_and_match_the_reference_setup() -> None:
    assert validate_train(DEFAULTS["train"]) == TrainConfig(
        epochs=5, batch_size=128, seeds=(42, 43, 44), precision="auto"
    )
    assert validate_preprocess(DEFAULTS["preprocess"]) == PreprocessConfig(0.1, None)
    model = validate_model(DEFAULTS["workloads"]["mnist_cnn"]["model"])
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


# What DVC (YAML 1.2) and a YAML 1.1 reader such as PyYAML disagree on.
DIALECT = {
    "epochs: 010": 10,  # octal 8 in YAML 1.1
    "epochs: 0o10": 8,
    "resume: yes": "yes",  # true in YAML 1.1
    "resume: no": "no",
    "resume: off": "off",
    "epochs: 1e3": 1000.0,  # a string in PyYAML
    "learning_rate: 1e-3": 0.001,
    "epochs: 1_000": 1000,
}


@pytest.mark.parametrize(("line", "value"), DIALECT.items(), ids=list(DIALECT))
def test_params_yaml_is_read_as_dvc_reads_it(line: str, value: object) -> None:
    """The stages train with the value dvc.lock and `dvc params diff` record."""
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    ours = params.parse_yaml(line, "params.yaml")
    assert ours == dvc_parse_yaml(line, "params.yaml")
    (key,) = ours
    assert ours[key] == value and type(ours[key]) is type(value)


def test_a_key_given_twice_is_an_error_as_in_dvc(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "params.yaml").read_text()
    line = "  epochs: 5\n"
    (tmp_path / "params.yaml").write_text(text.replace(line, line + "  epochs: 8\n", 1))
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml")
    number = text[: text.index(line)].count("\n") + 2
    assert str(error.value).startswith(
        f"{tmp_path / 'params.yaml'}: not valid YAML at line {number}, column 3: while "
        'constructing a mapping, found duplicate key "epochs" with value "8" (original value: "5")'
    )


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    """Nine levels of nine aliases: 387 million values once expanded."""
    lines, previous = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"], "l0"
    for level in range(1, 10):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*{previous}'] * 9)}]")
        previous = f"l{level}"
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml")
    assert time.monotonic() - started < 5
    assert str(error.value) == (
        f"{tmp_path / 'params.yaml'}: expands to more than 100,000 values through YAML aliases "
        "(*name); write the values out"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [("train:\n  seeds: [{}]\n", "train.seeds"), ("compare: [{}]\n", "compare"),
     ("optimizers:\n  adam: {{{}}}\n", "optimizers.adam")],
    ids=["seeds", "compare", "mapping"],
)  # fmt: skip
def test_a_list_too_long_is_named_not_blamed_on_aliases(
    tmp_path: Path, text: str, key: str
) -> None:
    """100,001 values written out, no alias: the key that holds them is named."""
    items = ", ".join(f"k{i}: 1" for i in range(100_001)) if "{{" in text else ", ".join(
        map(str, range(100_001))
    )  # fmt: skip
    (tmp_path / "params.yaml").write_text(text.format(items))
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml")
    assert str(error.value) == (
        f"{tmp_path / 'params.yaml'}: {key} holds 100,001 entries; a params file holds at "
        "most 100,000 values (params.yaml has about 300)"
    )


def test_a_message_quotes_a_huge_value_in_a_hundred_characters() -> None:
    with pytest.raises(ParamsError) as error:
        params.positive_int("x" * 10_000_000, "train.epochs")
    assert len(str(error.value)) < 150 and str(error.value).startswith("train.epochs: expected")
    with pytest.raises(ParamsError) as error:
        params.positive_int(list(range(10_000)), "train.epochs")
    assert len(str(error.value)) < 150
