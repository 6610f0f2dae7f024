"""Classic 2-D test functions, and the path an optimizer takes on one of them.

Each function comes with its exact gradient, a starting point, its minimum and a plot
window; `trajectory` runs a Keras optimizer on the exact gradient, in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import keras

Point = np.ndarray  # shape (2,)


@dataclass(frozen=True)
class TestFunction:
    """A 2-D function, its gradient, a starting point, its minimum and a plot window."""

    f: Callable[[float, float], float]
    grad: Callable[[float, float], tuple[float, float]]
    start: tuple[float, float]
    minimum: tuple[float, float] | None
    window: tuple[float, float, float, float]  # x_min, x_max, y_min, y_max


def _bowl(x: float, y: float) -> float:
    return 0.5 * (x**2 + 25.0 * y**2)  # condition number 25


def _rosenbrock(x: float, y: float) -> float:
    return (1 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _beale(x: float, y: float) -> float:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _saddle(x: float, y: float) -> float:
    return x**2 - y**2


FUNCTIONS: dict[str, TestFunction] = {
    "bowl": TestFunction(
        _bowl, lambda x, y: (x, 25.0 * y), (-4.0, 1.5), (0.0, 0.0), (-5, 5, -2, 2)
    ),
    "rosenbrock": TestFunction(
        _rosenbrock,
        lambda x, y: (-2 * (1 - x) - 400.0 * x * (y - x**2), 200.0 * (y - x**2)),
        (-1.5, 2.0),
        (1.0, 1.0),
        (-2, 2, -1, 3),
    ),
    "beale": TestFunction(
        _beale,
        lambda x, y: (
            2 * (1.5 - x + x * y) * (y - 1)
            + 2 * (2.25 - x + x * y**2) * (y**2 - 1)
            + 2 * (2.625 - x + x * y**3) * (y**3 - 1),
            2 * (1.5 - x + x * y) * x
            + 2 * (2.25 - x + x * y**2) * 2 * x * y
            + 2 * (2.625 - x + x * y**3) * 3 * x * y**2,
        ),
        (1.0, 1.5),
        (3.0, 0.5),
        (-1, 4, -1, 2),
    ),
    "saddle": TestFunction(
        _saddle, lambda x, y: (2 * x, -2 * y), (-1.5, 1e-3), None, (-2, 2, -1.5, 1.5)
    ),
}


def trajectory(
    function: TestFunction,
    optimizer: keras.optimizers.Optimizer,
    steps: int,
) -> np.ndarray:
    """The points (steps + 1, 2) ``optimizer`` visits from the function's start, on the
    exact gradient, in float64."""
    import keras  # here: plots.py, which the report stage uses, imports this module

    variable = keras.Variable(np.array(function.start, dtype=np.float64), dtype="float64")
    points = [np.array(function.start, dtype=np.float64)]
    for _ in range(steps):
        x, y = points[-1]
        gradient = np.asarray(function.grad(x, y), dtype=np.float64)
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        point = keras.ops.convert_to_numpy(variable).copy()
        points.append(point)
        if not np.all(np.isfinite(point)):
            break
    return np.array(points)


def losses(function: TestFunction, points: np.ndarray) -> np.ndarray:
    """The function's value at each point."""
    return np.array([function.f(x, y) for x, y in points])


def path_table(paths: dict[str, np.ndarray], function: TestFunction) -> pd.DataFrame:
    """One row per optimizer and step: x, y and the loss there (the data of `dvc plots`)."""
    frames = []
    for name, points in paths.items():
        frame = pd.DataFrame(points, columns=["x", "y"])
        frame.insert(0, "step", range(len(points)))
        frame.insert(1, "optimizer", name)
        frame["loss"] = losses(function, points)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
