"""Stage `trajectories`: each optimizer's path on classic 2-D test functions.

Every optimizer in `trajectories.optimizers` (entries of `optimizers`, built by Keras as in
training) starts from the same point on each function of `trajectories.functions` and takes
`trajectories.steps` steps on the exact gradient, with a learning rate per optimizer and
function (params). Writes, per function, reports/trajectories/<function>.png (contour plot
with every path, and the loss per step) and reports/trajectories/<function>.csv (step,
optimizer, x, y, loss: the data behind `dvc plots`), and logs them to MLflow.

    python -m stages.trajectories
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

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
    optimizer,
    steps: int,  # a keras.optimizers.Optimizer
) -> np.ndarray:
    """The points (steps + 1, 2) ``optimizer`` visits from the function's start, on the
    exact gradient, in float64."""
    import keras

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


def plot(name: str, function: TestFunction, paths: dict[str, np.ndarray], path) -> None:
    """Contour plot with every optimizer's path (left) and the loss per step (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from stages.common import atomic_path

    x_min, x_max, y_min, y_max = function.window
    xs, ys = np.meshgrid(np.linspace(x_min, x_max, 300), np.linspace(y_min, y_max, 300))
    zs = np.vectorize(function.f)(xs, ys)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    shifted = zs - zs.min() + 1e-3  # log levels need positive values (the saddle has none)
    left.contour(
        xs,
        ys,
        shifted,
        levels=np.geomspace(shifted.min(), shifted.max(), 30),
        cmap="Greys",
        linewidths=0.6,
    )
    for label, points in paths.items():
        inside = points[np.all(np.isfinite(points), axis=1)]
        (line,) = left.plot(inside[:, 0], inside[:, 1], marker=".", markersize=3, label=label)
        right.plot(losses(function, inside), color=line.get_color(), label=label)
    left.plot(*function.start, "ko")
    if function.minimum:
        left.plot(*function.minimum, "k*", markersize=12)
    left.set(
        xlim=(x_min, x_max), ylim=(y_min, y_max), title=f"{name}: paths", xlabel="x", ylabel="y"
    )
    right.set(title=f"{name}: loss per step", xlabel="step", ylabel="f(x, y)")
    if function.minimum:
        right.set_yscale("symlog", linthresh=1e-4)
    left.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
