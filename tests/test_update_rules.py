"""The NumPy rules of tests/update_rules.py against keras.optimizers, step by step."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import keras
import numpy as np
import pytest

from . import update_rules as rules

CASES: list[tuple[str, Callable[..., rules.Rule], dict]] = [
    ("SGD", rules.sgd, dict(learning_rate=0.1)),
    ("SGD", rules.sgd, dict(learning_rate=0.05, momentum=0.9)),
    ("SGD", rules.sgd, dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("SGD", rules.sgd, dict(learning_rate=0.01, momentum=0.5, nesterov=True)),
    ("Adagrad", rules.adagrad, dict()),
    (
        "Adagrad",
        rules.adagrad,
        dict(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=1e-3),
    ),
    ("RMSprop", rules.rmsprop, dict()),
    ("RMSprop", rules.rmsprop, dict(learning_rate=0.01, rho=0.8, momentum=0.9)),
    ("RMSprop", rules.rmsprop, dict(learning_rate=0.01, centered=True)),
    (
        "RMSprop",
        rules.rmsprop,
        dict(learning_rate=0.003, momentum=0.5, centered=True, epsilon=1e-4),
    ),
    ("Adam", rules.adam, dict()),
    ("Adam", rules.adam, dict(learning_rate=0.01, beta_1=0.5, beta_2=0.9, epsilon=1e-3)),
    ("Adam", rules.adam, dict(amsgrad=True)),
    ("Adam", rules.adam, dict(learning_rate=0.02, beta_2=0.99, amsgrad=True)),
]


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    """Float64 weights on either backend: JAX computes in float32 unless x64 is on."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize(
    ("class_name", "make", "kwargs"), CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_rule_matches_keras_at_every_step(
    class_name: str, make: Callable[..., rules.Rule], kwargs: dict
) -> None:
    """Same start, same 100 random gradients: the weights agree to 1e-6 relative after every
    step. Float64 weights on both sides; Keras keeps the learning rate in a float32 variable,
    so the reference gets that float32 value."""
    optimizer = getattr(keras.optimizers, class_name)(**kwargs)
    learning_rate = float(np.float32(optimizer.learning_rate.numpy()))
    rule = make(**(kwargs | {"learning_rate": learning_rate}))
    rng = np.random.default_rng(7)
    shape = (3, 4)
    w = rng.normal(size=shape)
    gradients = rng.normal(size=(100, *shape)) * rng.choice([0.01, 1.0, 10.0], size=(100, 1, 1))
    variable = keras.Variable(w.copy(), dtype="float64")
    state = rule.init_state(shape)
    for t, g in enumerate(gradients, start=1):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g, dtype="float64"), variable)])
        w, state = rule.step(w, g, state, t)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable),
            w,
            rtol=1e-6,
            atol=1e-12,
            err_msg=f"{class_name} {kwargs}: step {t}",
        )
