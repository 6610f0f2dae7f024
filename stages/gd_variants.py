"""Stage `gd_variants`: batch, stochastic and mini-batch gradient descent, side by side.

The tutorial's lesson, measured: the same optimizer and model (of `gd_variants.workload`)
trained on its first `gd_variants.images` training images for `gd_variants.epochs` epochs
with three batch sizes:
the whole subset (batch gradient descent: one update per epoch), 1 (stochastic) and
`gd_variants.mini_batch` (mini-batch). Writes reports/gd_variants.csv (per variant and epoch:
updates so far, seconds so far, validation accuracy and loss) and logs each variant as an
MLflow run; the report stage draws it.

    python -m stages.gd_variants
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads Keras on train.backend, quietly
import logging
from typing import Any

import keras
import mlflow
import pandas as pd

from mnist_optimizers import mlflow_runs, mlflow_store, runtime, workloads
from mnist_optimizers.cli import run_stage
from mnist_optimizers.files import load_training_data, write_csv
from mnist_optimizers.fit import fit_model, validate_train
from mnist_optimizers.model import build_model
from mnist_optimizers.optimizers import build_optimizer, validate_optimizer_names
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import GD_VARIANTS_FILE
from mnist_optimizers.sections.gd_variants import GDConfig, validate_gd

log = logging.getLogger(__name__)


def batch_sizes(config: GDConfig, images: int) -> dict[str, int]:
    """Variant name -> batch size."""
    return {"batch": images, "stochastic": 1, "mini-batch": config.mini_batch}


def updates_per_epoch(images: int, batch_size: int) -> int:
    """Updates in one epoch of ``images`` at ``batch_size``."""
    return -(-images // batch_size)  # the last, partial batch is an update too


def gd_variants(params: dict[str, Any]) -> pd.DataFrame:
    """Train each variant; write and return the per-epoch table."""
    specs = validate_optimizer_names(params["optimizers"])
    config = validate_gd(params["gd_variants"], specs, params["workloads"])
    model_config = workloads.workload(params, config.workload).model
    experiment_name = mlflow_store.validate_mlflow(params["mlflow"])
    keras_backend = validate_train(params["train"]).backend
    runtime.start(keras_backend)
    experiment_id = mlflow_store.setup_experiment(experiment_name)
    data = load_training_data(config.workload, model_config.num_classes, config.images)
    images = len(data["x_train"])
    rows = []
    for variant, batch_size in batch_sizes(config, images).items():
        keras.backend.clear_session()
        keras.utils.set_random_seed(config.seed)
        model = build_model(model_config, data["x_train"].shape[1:])
        optimizer = build_optimizer(config.optimizer, specs[config.optimizer])
        tags = mlflow_runs.run_tags("gd_variants") | {
            "gd_variant": variant,
            "workload": config.workload,
            mlflow_runs.BACKEND_TAG: keras_backend,
        }
        with mlflow_runs.tracked_run(experiment_id, f"gd {variant}", tags):
            mlflow.log_params(
                {"gd_variant": variant, "batch_size": batch_size, "images": images}
                | {"optimizer": config.optimizer, "workload": config.workload}
            )
            tracker = fit_model(model, optimizer, data, config.epochs, batch_size)
        seconds = 0.0
        for row in tracker.history:
            seconds += row["epoch_seconds"]
            rows.append(
                {
                    "variant": variant,
                    "batch_size": batch_size,
                    "epoch": row["epoch"],
                    "updates": row["epoch"] * updates_per_epoch(images, batch_size),
                    "seconds": round(seconds, 2),
                    "val_accuracy": row["val_accuracy"],
                    "val_loss": row["val_loss"],
                }
            )
        log.info("gd_variants: %s -> val_accuracy %.4f", variant, rows[-1]["val_accuracy"])
    table = pd.DataFrame(rows)
    write_csv(GD_VARIANTS_FILE, table)
    return table


def main(argv: list[str]) -> None:
    print(gd_variants(load_params()).to_markdown(index=False))


if __name__ == "__main__":
    run_stage(main)
