"""Reference update rules in plain NumPy, written exactly as Keras 3 implements them.

Each rule is a pure function ``step(w, g, state, t) -> (w, state)``: the weights after one
update with gradient ``g`` at step ``t`` (1 for the first update), and the optimizer's new
state. ``init_state(shape)`` gives the state Keras starts from. tests/test_update_rules.py
checks every rule against the matching ``keras.optimizers`` class, step by step.

Where Keras departs from the textbook (found by reading keras/src/optimizers/*.py, 3.15, and
confirmed by those tests):

- Adagrad starts its accumulator at 0.1 (``initial_accumulator_value``), not 0, and puts
  epsilon *inside* the square root: ``sqrt(G + eps)``.
- RMSprop also puts epsilon inside the square root; its momentum accumulates the scaled
  increment (``m = momentum * m + lr * g / sqrt(...)``), as TensorFlow 1 did.
- Adam folds the bias correction into the step size (``alpha_t = lr * sqrt(1 - beta_2^t) /
  (1 - beta_1^t)``) and adds epsilon to ``sqrt(v)``, not to the bias-corrected ``sqrt(v_hat)``:
  the "epsilon hat" form of Kingma and Ba (2014), section 2, last paragraph. With AMSGrad it
  keeps the running maximum of the *uncorrected* ``v``.
- SGD's momentum keeps a velocity that already includes the learning rate
  (``v = momentum * v - lr * g``); Nesterov then steps by ``momentum * v - lr * g``.
- Precision: the learning rate lives in a float32 variable. On TensorFlow, ``ops.cast`` of
  a Python float goes through float32, so SGD's momentum and Adam's beta powers are
  float32-rounded even for float64 weights; on JAX (with float64 on) the cast is exact
  (``as_keras_casts``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

State = dict[str, np.ndarray]


def as_keras_casts(value: float) -> float:
    """``value`` as Keras' ``ops.cast(value, "float64")`` gives it on the backend of this
    process. TensorFlow makes a Python float a float32 tensor first, so the result is
    float32-rounded (0.9 -> 0.8999999761581421); JAX casts it exactly."""
    return float(np.float32(value)) if keras.backend.backend() == "tensorflow" else value


@dataclass(frozen=True)
class Rule:
    """An update rule and the state it starts from."""

    init_state: Callable[[tuple[int, ...]], State]
    step: Callable[[np.ndarray, np.ndarray, State, int], tuple[np.ndarray, State]]
    hyperparameters: dict[str, float | bool] = field(default_factory=dict)


def sgd(learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False) -> Rule:
    """Gradient descent, with optional (Nesterov) momentum.

    Without momentum:  w <- w - lr * g
    With momentum:     v <- momentum * v - lr * g;  w <- w + v
    Nesterov:          v <- momentum * v - lr * g;  w <- w + momentum * v - lr * g
    (v starts at 0.)
    """

    def init_state(shape: tuple[int, ...]) -> State:
        return {"v": np.zeros(shape)} if momentum else {}

    def step(w: np.ndarray, g: np.ndarray, state: State, t: int) -> tuple[np.ndarray, State]:
        if not momentum:
            return w - learning_rate * g, state
        mu = as_keras_casts(momentum)  # ops.cast(self.momentum, variable.dtype)
        v = mu * state["v"] - learning_rate * g
        w = w + (mu * v - learning_rate * g if nesterov else v)
        return w, {"v": v}

    return Rule(
        init_state,
        step,
        {"learning_rate": learning_rate, "momentum": momentum, "nesterov": nesterov},
    )


def adagrad(
    learning_rate: float = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7
) -> Rule:
    """Adagrad (Duchi et al., 2011): a per-weight step shrinking with the sum of squared
    gradients. First-order: it never computes second derivatives.

    G <- G + g^2;  w <- w - lr * g / sqrt(G + eps)   (G starts at initial_accumulator_value)
    """

    def init_state(shape: tuple[int, ...]) -> State:
        return {"G": np.full(shape, initial_accumulator_value)}

    def step(w: np.ndarray, g: np.ndarray, state: State, t: int) -> tuple[np.ndarray, State]:
        accumulator = state["G"] + g**2
        return w - learning_rate * g / np.sqrt(accumulator + epsilon), {"G": accumulator}

    return Rule(
        init_state,
        step,
        {
            "learning_rate": learning_rate,
            "initial_accumulator_value": initial_accumulator_value,
            "epsilon": epsilon,
        },
    )


def rmsprop(
    learning_rate: float = 0.001,
    rho: float = 0.9,
    momentum: float = 0.0,
    epsilon: float = 1e-7,
    centered: bool = False,
) -> Rule:
    """RMSprop (Hinton, Coursera lecture 6e): Adagrad with a moving average instead of a sum.

    v <- rho * v + (1 - rho) * g^2
    centered:   a <- rho * a + (1 - rho) * g;  d = v - a^2 + eps;  else d = v + eps
    step = lr * g / sqrt(d)
    momentum:   m <- momentum * m + step;  w <- w - m;   else w <- w - step
    (v, a and m start at 0.)
    """

    def init_state(shape: tuple[int, ...]) -> State:
        state = {"v": np.zeros(shape)}
        if centered:
            state["a"] = np.zeros(shape)
        if momentum:
            state["m"] = np.zeros(shape)
        return state

    def step(w: np.ndarray, g: np.ndarray, state: State, t: int) -> tuple[np.ndarray, State]:
        new = {"v": rho * state["v"] + (1 - rho) * g**2}
        if centered:
            new["a"] = rho * state["a"] + (1 - rho) * g
            denominator = new["v"] - new["a"] ** 2 + epsilon
        else:
            denominator = new["v"] + epsilon
        increment = learning_rate * g / np.sqrt(denominator)
        if momentum:
            new["m"] = momentum * state["m"] + increment
            return w - new["m"], new
        return w - increment, new

    return Rule(
        init_state,
        step,
        {
            "learning_rate": learning_rate,
            "rho": rho,
            "momentum": momentum,
            "epsilon": epsilon,
            "centered": centered,
        },
    )


def adam(
    learning_rate: float = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    amsgrad: bool = False,
) -> Rule:
    """Adam (Kingma and Ba, 2014), in the "epsilon hat" form Keras uses.

    m <- m + (1 - beta_1) * (g - m);  v <- v + (1 - beta_2) * (g^2 - v)
    alpha_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    AMSGrad:  v_max <- max(v_max, v), used in place of v below
    w <- w - alpha_t * m / (sqrt(v) + eps)
    (m, v and v_max start at 0.)
    """

    def init_state(shape: tuple[int, ...]) -> State:
        state = {"m": np.zeros(shape), "v": np.zeros(shape)}
        if amsgrad:
            state["v_max"] = np.zeros(shape)
        return state

    def step(w: np.ndarray, g: np.ndarray, state: State, t: int) -> tuple[np.ndarray, State]:
        m = state["m"] + (1 - beta_1) * (g - state["m"])
        v = state["v"] + (1 - beta_2) * (g**2 - state["v"])
        new = {"m": m, "v": v}
        if amsgrad:
            new["v_max"] = np.maximum(state["v_max"], v)
            v = new["v_max"]
        # ops.power(ops.cast(beta, dtype), t): float32-rounded betas in the bias correction
        # only; the moving averages multiply by the exact 1 - beta.
        beta_1_power = as_keras_casts(beta_1) ** t
        beta_2_power = as_keras_casts(beta_2) ** t
        alpha = learning_rate * np.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        return w - alpha * m / (np.sqrt(v) + epsilon), new

    return Rule(
        init_state,
        step,
        {
            "learning_rate": learning_rate,
            "beta_1": beta_1,
            "beta_2": beta_2,
            "epsilon": epsilon,
            "amsgrad": amsgrad,
        },
    )
