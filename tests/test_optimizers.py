"""The optimizer catalog: every Keras optimizer by name or `class:`, checked against its
constructor, and each entry of params.yaml taking real steps on the reference CNN. Bad
entries, as a user would type them, are rows of docs/errors.md."""

from __future__ import annotations

import inspect
import math
import re

import keras
import numpy as np
import pytest

from mnist_optimizers import optimizers
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.architecture import validate_model
from mnist_optimizers.model import build_model
from mnist_optimizers.params import load_params

from .conftest import PROJECT_ROOT


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
    optimizer = optimizers.build_optimizer(name, spec)
    assert type(optimizer).__name__ == cls
    assert math.isclose(float(optimizer.learning_rate), learning_rate, rel_tol=1e-6)


def test_class_key_sets_every_hyperparameter() -> None:
    optimizer = optimizers.build_optimizer(
        "nesterov", {"class": "sgd", "momentum": 0.9, "nesterov": True}
    )
    assert optimizer.get_config()["momentum"] == 0.9 and optimizer.get_config()["nesterov"] is True


@pytest.mark.parametrize("class_name", sorted(optimizers.optimizer_classes()))
def test_every_keras_optimizer_works_from_params_alone(class_name: str) -> None:
    optimizer = optimizers.build_optimizer(f"my_{class_name.lower()}", {"class": class_name})
    assert type(optimizer).__name__ == class_name


@pytest.mark.parametrize("class_name", sorted(optimizers.optimizer_classes()))
def test_every_argument_takes_its_own_default(class_name: str) -> None:
    """The type checks refuse nothing Keras documents: each argument set to its default."""
    cls = optimizers.optimizer_classes()[class_name]
    defaults = {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name not in ("self", "name") and p.default is not inspect.Parameter.empty
    }
    built = optimizers.build_optimizer("x", {"class": class_name, **defaults})
    assert type(built).__name__ == class_name


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"class": "SGD", "nesterov": "no"}, "optimizers.x.nesterov: expected true or false, got 'no'"),
     ({"class": "Adam", "amsgrad": "false"}, "amsgrad: expected true or false, got 'false'"),
     ({"class": "RMSprop", "centered": 0}, "centered: expected true or false, got 0"),
     ({"class": "Adam", "learning_rate": 1e39}, "learning_rate: 1e+39 is inf in float32"),
     ({"class": "Adam", "learning_rate": 1e-50}, "learning_rate: 1e-50 is 0 in float32"),
     ({"class": "Adam", "epsilon": -1e-45}, "epsilon: -1e-45 is 0 in float32"),
     ({"class": "Adam", "clipnorm": "x"}, "optimizers.x.clipnorm: expected a number, got 'x'"),
     ({"class": "Adam", "beta_1": True}, "beta_1: expected a number, got True"),
     ({"class": "Adam", "gradient_accumulation_steps": 2.5}, "expected a whole number, got 2.5"),
     ({"class": "Muon", "ns_steps": "5"}, "ns_steps: expected a whole number, got '5'"),
     ({"class": "Muon", "exclude_layers": "dense"}, "expected a list of layer names or null")],
    ids=["bool-no", "bool-string", "bool-int", "inf-in-float32", "zero-in-float32",
         "negative-zero", "clipnorm-string", "number-bool", "whole-float", "whole-string",
         "names-string"],
)  # fmt: skip
def test_an_argument_of_the_wrong_type_is_refused_before_keras_takes_it(
    spec: dict, message: str
) -> None:
    """Keras would take each: a string as true, 1e39 as inf; check_params runs this."""
    with pytest.raises(ParamsError, match=re.escape(message)):
        optimizers.build_optimizer("x", spec)


CATALOG = load_params(PROJECT_ROOT / "params.yaml")["optimizers"]


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_catalog_entry_trains_the_reference_cnn(name: str) -> None:
    """Each entry of params.yaml's catalog takes real steps on the reference model: finite
    loss, every trainable weight moved."""
    keras.utils.set_random_seed(0)
    model = build_model(
        validate_model(load_params(PROJECT_ROOT / "params.yaml")["workloads"]["mnist_cnn"]["model"]), (28, 28, 1)
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    optimizer = optimizers.build_optimizer(name, CATALOG[name])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    moved = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(moved), f"{name}: weights left unchanged: {moved}"
    keras.backend.clear_session()


def test_the_catalogs_adafactor_survives_a_dead_unit() -> None:
    """A weight between a dead input unit and a dead output unit (a zero row and a zero
    column of its gradient): with Keras' epsilon_1 (1e-30) Adafactor's factored second moment
    underflows to 0 there and the update is 0/0 = NaN; with the catalog's it is finite and
    leaves that weight alone. (If Keras fixes it, the first assertion says so.)"""
    gradient = np.full((4, 4), 1e-2, dtype=np.float32)
    gradient[0, :] = gradient[:, 0] = 0.0

    def one_step(optimizer: keras.optimizers.Optimizer) -> np.ndarray:
        variable = keras.Variable(np.ones((4, 4), dtype=np.float32))
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        return keras.ops.convert_to_numpy(variable)

    assert np.isnan(one_step(keras.optimizers.Adafactor(learning_rate=0.001))[0, 0])
    after = one_step(optimizers.build_optimizer("adafactor", CATALOG["adafactor"]))
    assert np.isfinite(after).all()
    assert after[0, 0] == 1.0 and (after[1:, 1:] < 1.0).all()
