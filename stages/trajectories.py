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

import mnist_optimizers.quiet  # noqa: F401  first: loads Keras on train.backend, quietly
import logging
import math
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mnist_optimizers import mlflow_runs, mlflow_store
from mnist_optimizers.cli import run_stage
from mnist_optimizers.files import write_text_atomic
from mnist_optimizers.optimizers import build_optimizer, validate_optimizer_names
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import TRAJECTORIES_DIR
from mnist_optimizers.plots import plot_trajectories
from mnist_optimizers.surfaces import FUNCTIONS, path_table, trajectory
from mnist_optimizers.sections.trajectories import TrajectoriesConfig, validate_trajectories

log = logging.getLogger(__name__)


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
    experiment_id = mlflow_store.setup_experiment(name)
    with mlflow_runs.tracked_run(experiment_id, "trajectories", mlflow_runs.run_tags("trajectories")):
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
    experiment_name = mlflow_store.validate_mlflow(params["mlflow"])
    tables = run(config, optimizers)
    log_to_mlflow(config, tables, experiment_name)
    print(TRAJECTORIES_DIR)


if __name__ == "__main__":
    run_stage(main)
