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
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mnist_optimizers import tracking
from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.files import write_text_atomic
from mnist_optimizers.optimizers import build_optimizer, validate_optimizer_names
from mnist_optimizers.params import check_keys, load_params, positive_int
from mnist_optimizers.paths import TRAJECTORIES_DIR
from mnist_optimizers.plots import plot_trajectories
from mnist_optimizers.surfaces import FUNCTIONS, path_table, trajectory

log = logging.getLogger(__name__)


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
    check_keys(section, keys, "trajectories", keys)
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


def run(config: TrajectoriesConfig, optimizers: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every optimizer on every function; write the figures and tables; return the tables."""
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
            plot_trajectories(
                function_name, function, paths, TRAJECTORIES_DIR / f"{function_name}.png"
            )
        write_text_atomic(TRAJECTORIES_DIR / f"{function_name}.csv", table.to_csv(index=False))
        tables[function_name] = table
        for label, points in paths.items():
            final = table[table["optimizer"] == label]["loss"].iloc[-1]
            log.info(
                "%s, %s: loss %.4g after %d steps", function_name, label, final, len(points) - 1
            )
    return tables


def log_to_mlflow(config: TrajectoriesConfig, tables: dict[str, pd.DataFrame], name: str) -> None:
    """One MLflow run `trajectories`: the rates, each path's final loss, the figures."""
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
        mlflow.log_artifacts(str(TRAJECTORIES_DIR), "trajectories")


def main(argv: list[str]) -> None:
    params = load_params()
    optimizers = validate_optimizer_names(params["optimizers"])
    config = validate_trajectories(params["trajectories"], optimizers)
    experiment_name = tracking.validate_mlflow(params["mlflow"])
    tables = run(config, optimizers)
    log_to_mlflow(config, tables, experiment_name)
    print(TRAJECTORIES_DIR)


if __name__ == "__main__":
    run_stage(main)
