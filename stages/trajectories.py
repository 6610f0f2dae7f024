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
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import (
    REPORTS_DIR,
    ParamsError,
    _check_keys,
    load_params,
    positive_int,
    run_stage,
    validate_mlflow,
    validate_optimizer_names,
    write_text_atomic,
)

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


OUT_DIR = REPORTS_DIR / "trajectories"


@dataclass(frozen=True)
class TrajectoriesConfig:
    functions: tuple[str, ...]
    optimizers: tuple[str, ...]
    steps: int
    learning_rates: dict[str, dict[str, float]]  # function -> optimizer -> rate


def validate_trajectories(section: Any, optimizers: dict[str, Any]) -> TrajectoriesConfig:
    """Check the `trajectories` section: known functions, optimizers that are entries of
    `optimizers`, a positive step count, and a positive learning rate for every pair."""
    keys = ("functions", "optimizers", "steps", "learning_rates")
    _check_keys(section, keys, "trajectories", keys)
    functions, names = section["functions"], section["optimizers"]
    if not isinstance(functions, list) or not functions or set(functions) - set(FUNCTIONS):
        raise ParamsError(
            f"trajectories.functions: expected a non-empty list of {', '.join(FUNCTIONS)}, "
            f"got {functions!r}"
        )
    if not isinstance(names, list) or not names or set(names) - set(optimizers):
        raise ParamsError(
            "trajectories.optimizers: expected a non-empty list of entries of `optimizers`, "
            f"got {names!r}"
        )
    rates = section["learning_rates"]
    for function in functions:
        row = rates.get(function) if isinstance(rates, dict) else None
        for name in names:
            rate = row.get(name) if isinstance(row, dict) else None
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
                raise ParamsError(
                    f"trajectories.learning_rates.{function}.{name}: expected a positive "
                    f"number, got {rate!r}"
                )
    return TrajectoriesConfig(
        functions=tuple(functions),
        optimizers=tuple(names),
        steps=positive_int(section["steps"], "trajectories.steps"),
        learning_rates={f: {n: float(rates[f][n]) for n in names} for f in functions},
    )


def trajectory(
    function: TestFunction,
    optimizer,  # a keras.optimizers.Optimizer
    steps: int,
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


def run(config: TrajectoriesConfig, optimizers: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every optimizer on every function; write the figures and tables; return the tables."""
    from stages.train import build_optimizer

    tables = {}
    for function_name in config.functions:
        function = FUNCTIONS[function_name]
        paths = {}
        for name in config.optimizers:
            rate = config.learning_rates[function_name][name]
            optimizer = build_optimizer(name, optimizers[name] | {"learning_rate": rate})
            with np.errstate(over="ignore", invalid="ignore"):
                paths[f"{name} ({rate:g})"] = trajectory(function, optimizer, config.steps)
        with np.errstate(over="ignore", invalid="ignore"):
            table = path_table(paths, function)
            plot(function_name, function, paths, OUT_DIR / f"{function_name}.png")
        write_text_atomic(OUT_DIR / f"{function_name}.csv", table.to_csv(index=False))
        tables[function_name] = table
        for label, points in paths.items():
            final = table[table["optimizer"] == label]["loss"].iloc[-1]
            log.info(
                "%s, %s: loss %.4g after %d steps", function_name, label, final, len(points) - 1
            )
    return tables


def log_to_mlflow(config: TrajectoriesConfig, tables: dict[str, pd.DataFrame], name: str) -> None:
    """One MLflow run `trajectories`: the rates, each path's final loss, the figures."""
    import mlflow

    from stages import tracking

    experiment_id = tracking.setup_experiment(name)
    with tracking.tracked_run(experiment_id, "trajectories", tracking.run_tags("trajectories")):
        mlflow.log_params(
            {
                f"lr.{function}.{optimizer}": rate
                for function, rates in config.learning_rates.items()
                for optimizer, rate in rates.items()
            }
            | {"steps": config.steps}
        )
        for function, table in tables.items():
            for label, rows in table.groupby("optimizer", sort=False):
                final = rows["loss"].iloc[-1]
                if math.isfinite(final):
                    key = f"final_loss.{function}.{label.split(' ')[0]}"
                    mlflow.log_metric(key, float(final))
        mlflow.log_artifacts(str(OUT_DIR), "trajectories")


def main(argv: list[str]) -> None:
    params = load_params()
    optimizers = validate_optimizer_names(params["optimizers"])
    config = validate_trajectories(params["trajectories"], optimizers)
    experiment_name = validate_mlflow(params["mlflow"])
    tables = run(config, optimizers)
    log_to_mlflow(config, tables, experiment_name)
    print(Path(OUT_DIR))


if __name__ == "__main__":
    run_stage(main)
