"""Stage `tune@<optimizer>`: a learning-rate grid for one optimizer, on a budget.

Trains the CNN once per learning rate of the log-spaced grid in `tune` (params.yaml), each
on the first `tune.images` training images for `tune.epochs` epochs, and judges it on the whole
validation split: never on the test set, which would make the reported test accuracies
optimistic. Every trial is an MLflow run nested under one parent run per optimizer
(`tune adam`), so the UI shows the grid as a group. Writes metrics/tune/<optimizer>.json:
the trials and the best learning rate, which the `train_tuned` stages train with.

    python -m stages.tune adam       # what `dvc repro tune@adam` runs
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import mlflow
import pandas as pd
import tensorflow as tf

from mnist_optimizers import runtime, stats, tracking
from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.files import load_training_data, write_json_atomic
from mnist_optimizers.fit import fit_model, set_precision, validate_train
from mnist_optimizers.model import build_model, validate_model
from mnist_optimizers.optimizers import build_optimizer, optimizer_spec, validate_optimizer_names
from mnist_optimizers.params import (
    load_params,
)
from mnist_optimizers.paths import TUNE_DIR
from mnist_optimizers.sections.tune import validate_tune

log = logging.getLogger(__name__)


def tune(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the grid for optimizer ``name``; write and return its result."""
    spec = optimizer_spec(validate_optimizer_names(params["optimizers"]), name)
    model_config = validate_model(params["model"])
    train_config = validate_train(params["train"])
    config = validate_tune(params["tune"])
    experiment_name = tracking.validate_mlflow(params["mlflow"])
    grid = stats.log_grid(config.low, config.high, config.points)
    for rate in grid:  # fail on a bad spec before any training, not at the third trial
        build_optimizer(name, spec | {"learning_rate": rate})
    runtime.configure_threads()
    tf.config.experimental.enable_op_determinism()
    experiment_id = tracking.setup_experiment(experiment_name)

    data = load_training_data(model_config.num_classes, config.images)
    set_precision(train_config.precision)

    trials = []
    tags = tracking.run_tags(f"tune@{name}") | {"optimizer": name}
    with tracking.tracked_run(experiment_id, f"tune {name}", tags) as parent:
        mlflow.log_params(
            {
                "optimizer": name,
                "tune.grid": grid,
                "tune.images": len(data["x_train"]),
                "tune.epochs": config.epochs,
                "tune.seed": config.seed,
            }
        )
        for rate in grid:
            keras.backend.clear_session()
            keras.utils.set_random_seed(config.seed)
            optimizer = build_optimizer(name, spec | {"learning_rate": rate})
            model = build_model(model_config, data["x_train"].shape[1:])
            with tracking.tracked_run(
                experiment_id, f"{name} lr={rate:g}", tags | {"trial": "true"}, nested=True
            ):
                mlflow.log_params({"optimizer": name, "optimizer.learning_rate": rate})
                tracker = fit_model(model, optimizer, data, config.epochs, train_config.batch_size)
            last = tracker.history[-1]
            # A diverged run (NaN loss) ranks last, not first.
            val_accuracy = 0.0 if math.isnan(last["val_loss"]) else last["val_accuracy"]
            trials.append(
                {"learning_rate": rate, "val_accuracy": val_accuracy, "val_loss": last["val_loss"]}
            )
            log.info("tune@%s: lr %g -> val_accuracy %.4f", name, rate, val_accuracy)
        best = stats.best_learning_rate(pd.DataFrame(trials))
        mlflow.log_metric("best_learning_rate", best)
        mlflow.set_tag("best_learning_rate", f"{best:g}")
    result = {
        "optimizer": name,
        "best_learning_rate": best,
        "trials": trials,
        "images": len(data["x_train"]),
        "epochs": config.epochs,
        "mlflow_run_id": parent.info.run_id,
    }
    write_json_atomic(TUNE_DIR / f"{name}.json", result)
    log.info("tune@%s: best learning rate %g", name, best)
    return result


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ParamsError("usage: python -m stages.tune <optimizer name from params.yaml>")
    tune(argv[0], load_params())


if __name__ == "__main__":
    run_stage(main)
