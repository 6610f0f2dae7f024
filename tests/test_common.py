"""Params loading and validation, atomic writes."""

from __future__ import annotations

import copy
import subprocess
import sys
import re
from pathlib import Path

import pytest

from stages import common
from stages.common import ParamsError, atomic_path, load_params, write_text_atomic

from .conftest import PROJECT_ROOT

DEFAULTS = load_params(PROJECT_ROOT / "params.yaml")


def test_project_params_are_valid_and_match_the_reference_setup() -> None:
    assert common.validate_train(DEFAULTS["train"]) == common.TrainConfig(
        epochs=5, batch_size=128, seeds=(42, 43, 44), precision="float32"
    )
    assert common.validate_preprocess(DEFAULTS["preprocess"]) == common.PreprocessConfig(0.1, None)
    model = common.validate_model(DEFAULTS["model"])
    assert model.conv_blocks == ((32, 64), (64,)) and model.dense_units == (128,)
    compared = common.validate_compare(DEFAULTS["compare"], DEFAULTS["optimizers"])
    assert {name: DEFAULTS["optimizers"][name]["learning_rate"] for name in compared} == {
        "sgd": 0.01,
        "adagrad": 0.001,
        "adam": 0.001,
        "rmsprop": 0.001,
    }


def test_the_catalog_holds_every_keras_optimizer_the_issue_names() -> None:
    from stages.train import build_optimizer

    classes = {type(build_optimizer(n, s)).__name__ for n, s in DEFAULTS["optimizers"].items()}
    assert classes >= {
        "SGD",
        "Adagrad",
        "RMSprop",
        "Adam",
        "AdamW",
        "Nadam",
        "Adamax",
        "Adadelta",
        "Adafactor",
        "Ftrl",
        "Lion",
        "Lamb",
        "Muon",
    }


@pytest.mark.parametrize(
    ("compare", "message"),
    [
        ([], "compare: expected a non-empty list of optimizer names, got []"),
        ("adam", "compare: expected a non-empty list of optimizer names, got 'adam'"),
        (["adam", "nosuch"], "compare: nosuch not in `optimizers`; entries: sgd, "),
        (["adam", "adam"], "compare: each optimizer once, got ['adam', 'adam']"),
    ],
)
def test_bad_compare_lists(compare: object, message: str) -> None:
    with pytest.raises(ParamsError, match=re.escape(message)):
        common.validate_compare(compare, DEFAULTS["optimizers"])
    download = common.validate_download(DEFAULTS["download"])
    assert download.sha256["train-images-idx3-ubyte.gz"].startswith("ba891046")


def test_load_params_reads_scientific_notation_as_float(tmp_path: Path) -> None:
    text = (
        (PROJECT_ROOT / "params.yaml")
        .read_text()
        .replace("learning_rate: 0.01", "learning_rate: 1e-2")
    )
    (tmp_path / "params.yaml").write_text(text)
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
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_params(tmp_path / "params.yaml")


def test_load_params_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "params.yaml")


def _with(section: str, key: str, value: object) -> dict:
    params = copy.deepcopy(DEFAULTS[section])
    if value is _DELETE:
        del params[key]
    else:
        params[key] = value
    return params


_DELETE = object()
VALIDATORS = {
    "train": common.validate_train,
    "preprocess": common.validate_preprocess,
    "model": common.validate_model,
    "download": common.validate_download,
    "evaluate": common.validate_evaluate,
    "mlflow": common.validate_mlflow,
}

BAD_SECTIONS = [
    ("train", "epochs", 0, "train.epochs: expected a positive integer, got 0"),
    ("train", "epochs", -3, "train.epochs: expected a positive integer, got -3"),
    ("train", "epochs", 2.5, "train.epochs: expected a positive integer, got 2.5"),
    ("train", "epochs", "five", "train.epochs: expected a positive integer, got 'five'"),
    ("train", "batch_size", 0, "train.batch_size: expected a positive integer, got 0"),
    ("train", "batch_size", True, "train.batch_size: expected a positive integer, got True"),
    (
        "train",
        "seeds",
        [-1],
        "train.seeds: expected a non-empty list of non-negative integers, got [-1]",
    ),
    ("train", "seeds", [], "train.seeds: expected a non-empty list of non-negative integers"),
    ("train", "seeds", 42, "train.seeds: expected a non-empty list of non-negative integers"),
    ("train", "seeds", [1, 1], "train.seeds: each seed once, got [1, 1]"),
    ("train", "epochs", _DELETE, "train: missing key(s) epochs"),
    (
        "train",
        "precision",
        "float16",
        "train.precision: expected one of float32, mixed_bfloat16, got 'float16'",
    ),
    (
        "train",
        "epoch",
        5,
        "train: unknown key(s) epoch; expected: epochs, batch_size, seeds, precision",
    ),
    (
        "preprocess",
        "val_fraction",
        0,
        "preprocess.val_fraction: expected a number strictly between 0 and 1, got 0",
    ),
    (
        "preprocess",
        "val_fraction",
        1.0,
        "preprocess.val_fraction: expected a number strictly between 0 and 1, got 1.0",
    ),
    (
        "preprocess",
        "val_fraction",
        float("nan"),
        "preprocess.val_fraction: expected a finite number, got nan",
    ),
    ("preprocess", "subset", 0, "preprocess.subset: expected a positive integer, got 0"),
    ("preprocess", "subset", "1000", "preprocess.subset: expected a positive integer, got '1000'"),
    (
        "model",
        "dense_units",
        [],
        "model.dense_units: expected a non-empty list of positive integers, got []",
    ),
    (
        "model",
        "conv_blocks",
        [[32, 0]],
        "model.conv_blocks[0][1]: expected a positive integer, got 0",
    ),
    ("model", "kernel_size", None, "model.kernel_size: expected a positive integer, got None"),
    ("download", "sha256", {}, "download.sha256: missing key(s) train-images-idx3-ubyte.gz"),
    (
        "download",
        "mirrors",
        "https://example.org/",
        "download.mirrors: expected a list of base URLs",
    ),
    ("download", "timeout_seconds", 0, "download.timeout_seconds: expected > 0, got 0.0"),
    ("evaluate", "batch_size", -1, "evaluate.batch_size: expected a positive integer, got -1"),
    (
        "mlflow",
        "experiment_name",
        "",
        "mlflow.experiment_name: expected a non-empty string, got ''",
    ),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_SECTIONS)
def test_validators_reject_bad_values_with_the_key_in_the_message(
    section: str, key: str, value: object, message: str
) -> None:
    with pytest.raises(ParamsError) as error:
        VALIDATORS[section](_with(section, key, value))
    assert str(error.value).startswith(message)


def test_a_bad_checksum_is_named() -> None:
    download = copy.deepcopy(DEFAULTS["download"])
    download["sha256"]["t10k-labels-idx1-ubyte.gz"] = "abc"
    with pytest.raises(ParamsError, match="download.sha256.t10k-labels-idx1-ubyte.gz: expected 64"):
        common.validate_download(download)


@pytest.mark.parametrize(
    ("optimizers", "message"),
    [
        ({}, "optimizers: expected at least one entry"),
        (None, "optimizers: expected at least one entry"),
        ({"adam": 0.001}, "optimizers.adam: expected a mapping of hyperparameters, got 0.001"),
        ({"my adam": {}}, "optimizers.my adam: a name may hold only letters"),
    ],
)
def test_optimizer_entries_must_be_named_mappings(optimizers: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        common.validate_optimizer_names(optimizers)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.keras"
    target.write_text("old model")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".keras") as tmp:
        tmp.write_text("half a mod")
        raise RuntimeError("disk full")
    assert target.read_text() == "old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_a_full_disk_fails_with_one_message_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A real OS write failure: the process may write at most 4 KiB per file (RLIMIT_FSIZE,
    as a nearly full disk would allow), and the new metrics file is 10 KiB."""
    target = tmp_path / "metrics.json"
    target.write_text('{"val_accuracy": 0.99}\n')
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from stages.common import PipelineError, write_json_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    write_json_atomic(Path(sys.argv[1]), {'history': 'x' * 10000})\n"
        "except PipelineError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == (
        f"{target}: cannot write it: File too large; the previous file is unchanged"
    )
    assert target.read_text() == '{"val_accuracy": 0.99}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_model_that_cannot_be_saved_leaves_the_old_one(tmp_path: Path, monkeypatch) -> None:
    import errno

    import keras

    from stages import train

    target = tmp_path / "adam-42.keras"
    target.write_bytes(b"the previous model")

    def save_half(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_half)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(common.WriteError) as error:
        train.save_model(model, target)
    assert str(error.value) == (
        f"{target}: cannot write it: No space left on device; the previous file is unchanged"
    )
    assert target.read_bytes() == b"the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["adam-42.keras"]
