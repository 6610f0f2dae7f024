"""Stage `tune@<optimizer>`: a learning-rate search for one optimizer, on a budget.

Tries every rate of the log-spaced grid in `tune` (params.yaml), each on the first
`tune.images` training images for up to `tune.epochs` epochs, judged on the whole validation
split: never on the test set, which would make the reported test accuracies optimistic.
Optuna's successive-halving pruner stops the weak trials after `tune.min_epochs`
(mnist_optimizers/search.py). Every trial is an MLflow run nested under one parent run per
optimizer (`tune adam`), with its rate, the epochs it reached and why it stopped. Writes
metrics/tune/<optimizer>.json: the trials and the best learning rate; and
metrics/tuned_rate/<optimizer>.json: the best rate alone, which the `train_tuned` stages
train with (a rerun that chooses the same rate leaves them up to date).

    python -m stages.tune adam       # what `dvc repro tune@adam` runs
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads TensorFlow without its start-up log
import contextlib
import logging
import time
from typing import Any

import keras
import mlflow
import optuna
import tensorflow as tf

from mnist_optimizers import runtime, search, stats, tracking
from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import ParamsError
from mnist_optimizers.files import load_training_data, read_json, write_json_atomic
from mnist_optimizers.fit import fit_model, set_precision, training_device, validate_train
from mnist_optimizers.model import build_model, validate_model
from mnist_optimizers.optimizers import build_optimizer, optimizer_spec, validate_optimizer_names
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import DATA_SUMMARY_FILE, TUNE_DIR, TUNED_RATE_DIR
from mnist_optimizers.sections.tune import TuneConfig, validate_tune

log = logging.getLogger(__name__)


def tune(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the search for optimizer ``name``; write and return its result."""
    spec = optimizer_spec(validate_optimizer_names(params["optimizers"]), name)
    model_config = validate_model(params["model"])
    train_config = validate_train(params["train"])
    config = validate_tune(params["tune"])
    experiment_name = tracking.validate_mlflow(params["mlflow"])
    grid = stats.log_grid(config.low, config.high, config.points)
    runtime.configure_threads()  # before the first TensorFlow op: building an optimizer
    search.quiet_retracing_notices()
    for rate in grid:  # fail on a bad spec before any training, not at the third trial
        build_optimizer(name, spec | {"learning_rate": rate})
    tf.config.experimental.enable_op_determinism()
    experiment_id = tracking.setup_experiment(experiment_name)

    data = load_training_data(model_config.num_classes, config.images)
    precision = set_precision(train_config.precision)

    trials: list[dict[str, Any]] = []
    tags = tracking.run_tags(f"tune@{name}") | {
        "optimizer": name,
        tracking.DEVICE_TAG: training_device(),
    }

    def objective(trial: optuna.Trial) -> float:
        rate = search.suggest_rate(trial, grid)
        keras.backend.clear_session()  # which resets the dtype policy too: set it again
        keras.mixed_precision.set_global_policy(precision)
        keras.utils.set_random_seed(config.seed)
        optimizer = build_optimizer(name, spec | {"learning_rate": rate})
        model = build_model(model_config, data["x_train"].shape[1:])
        pruning = search.PruneWeakTrial(trial, config, data, train_config.batch_size)
        with tracking.tracked_run(
            experiment_id, f"{name} lr={rate:g}", tags | {"trial": "true"}, nested=True
        ):
            mlflow.log_params(
                {
                    "optimizer": name,
                    "optimizer.learning_rate": rate,
                    "train.effective_precision": model.dtype_policy.name,  # what it trains in
                }
            )
            start = time.perf_counter()
            with contextlib.suppress(optuna.TrialPruned):  # the pruner stopped it: a result
                fit_model(
                    model, optimizer, data, config.epochs, train_config.batch_size,
                    callbacks=[pruning],
                )  # fmt: skip
            seconds = time.perf_counter() - start
            reason = search.stop_reason(pruning, config)
            for step, _, _, judged in pruning.reports:
                mlflow.log_metric("judged_val_accuracy", judged, step=step)
            mlflow.log_metric("epochs_reached", pruning.epochs_reached)
            mlflow.set_tags(
                {"pruned": str(pruning.pruned_at is not None).lower(), "stopped": reason}
            )
        _, val_loss, _, value = pruning.reports[-1]
        trials.append(
            {
                "learning_rate": rate,
                "val_accuracy": value,
                "val_loss": val_loss,
                "epochs": pruning.epochs_reached,
                "pruned": pruning.pruned_at is not None,
                "stopped": reason,
                "seconds": round(seconds, 2),
            }
        )
        log.info("tune@%s: lr %g -> val_accuracy %.4f, %s", name, rate, value, reason)
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(reason)
        return value

    with tracking.tracked_run(experiment_id, f"tune {name}", tags) as parent:
        mlflow.log_params(
            {
                "optimizer": name,
                "tune.grid": grid,
                "tune.images": len(data["x_train"]),
                "tune.epochs": config.epochs,
                "tune.seed": config.seed,
                "tune.pruner": pruner_name(config),
                "train.effective_precision": precision,
            }
        )
        tracking.log_datasets(tracking.datasets(data, read_json(DATA_SUMMARY_FILE)))
        per_epoch = search.batches_per_epoch(len(data["x_train"]), train_config.batch_size)
        study = search.create_study(config, grid, per_epoch)
        study.optimize(objective, n_trials=len(grid), catch=())
        best = search.best_rate(trials)
        epochs_trained = round(sum(t["epochs"] for t in trials), 2)
        pruned = sum(t["pruned"] for t in trials)
        mlflow.log_metrics(
            {"best_learning_rate": best, "epochs_trained": epochs_trained, "trials_pruned": pruned}
        )
        mlflow.set_tag("best_learning_rate", f"{best:g}")
    result = {
        "optimizer": name,
        "best_learning_rate": best,
        "trials": trials,
        "images": len(data["x_train"]),
        "epochs": config.epochs,
        "pruner": pruner_name(config),
        "precision": precision,
        "epochs_trained": epochs_trained,
        "seconds": round(sum(t["seconds"] for t in trials), 2),
        "mlflow_run_id": parent.info.run_id,
    }
    write_json_atomic(TUNE_DIR / f"{name}.json", result)
    write_json_atomic(TUNED_RATE_DIR / f"{name}.json", {"optimizer": name, "learning_rate": best})
    log.info(
        "tune@%s: best learning rate %g; %d of %d trials pruned, %g epochs trained of %d",
        name, best, pruned, len(trials), epochs_trained,
        len(trials) * config.epochs,
    )  # fmt: skip
    return result


def pruner_name(config: TuneConfig) -> str:
    """The pruning, in words: what the tables and MLflow say of the search."""
    if not config.prune:
        return "none"
    return (
        f"successive halving (first rung after {config.min_epochs:g} epoch(s), "
        f"reduction factor {config.reduction_factor})"
    )


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ParamsError("usage: python -m stages.tune <optimizer name from params.yaml>")
    tune(argv[0], load_params())


if __name__ == "__main__":
    run_stage(main)
