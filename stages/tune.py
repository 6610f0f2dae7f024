"""Stage `tune@<workload>-<optimizer>`: a hyperparameter search on a budget.

Every rate of the grid in `tune` (`tune.space: learning_rate`), or `tune.trials` quasi-random
points of the learning rate and the optimizer's other hyperparameters (`full`), each on the
first `tune.images` training images for up to `tune.epochs` epochs, judged on validation
(never test); Optuna's successive halving stops the weak trials (mnist_optimizers/search.py).
Each trial is an MLflow run nested under the search's (`tune mnist_cnn/adam`), its
hyperparameters its params. Writes metrics/tune/<workload>/<optimizer>.json (the trials, the
best) and metrics/tuned/<workload>/<optimizer>.json (the chosen hyperparameters alone, which
`train_tuned` trains with: a rerun choosing the same leaves it up to date).

    python -m stages.tune mnist_cnn adam   # what `dvc repro tune@mnist_cnn-adam` runs
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads Keras on train.backend, quietly
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import mlflow
import optuna

from mnist_optimizers import (mlflow_logs, mlflow_runs, mlflow_store, paths, runtime, search, stats,
                              workloads)
from mnist_optimizers.cli import run_stage, stage_args
from mnist_optimizers.files import load_training_data, read_json, write_json_atomic
from mnist_optimizers.fit import fit_model, set_precision, validate_train
from mnist_optimizers.architecture import ModelConfig
from mnist_optimizers.model import build_model
from mnist_optimizers.optimizers import (build_optimizer, optimizer_spec, searched_arguments,
                                         validate_optimizer_names)
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import stage_item
from mnist_optimizers.sections.tune import TuneConfig, validate_tune

log = logging.getLogger(__name__)


@dataclass
class Search:
    """One optimizer's search, checked and loaded: what every trial shares."""

    item: str  # mnist_cnn-adam, as in the stage's name
    name: str  # the optimizer
    spec: dict[str, Any]
    model_config: ModelConfig
    batch_size: int
    config: TuneConfig
    grid: list[float]
    searched: tuple[str, ...]  # besides the learning rate (Keras' argument names)
    data: dict[str, Any]
    precision: str
    experiment_id: str
    tags: dict[str, str]
    trials: list[dict[str, Any]] = field(default_factory=list)


def tune(workload: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the search for optimizer ``name`` on ``workload``; write and return its result."""
    job = prepare(workload, name, params)
    config, data = job.config, job.data
    run_name = f"tune {workload}/{name}"
    with mlflow_runs.tracked_run(job.experiment_id, run_name, job.tags) as parent:
        mlflow.log_params(
            {
                "workload": workload,
                "optimizer": name,
                "tune.images": len(data["x_train"]),
                "tune.epochs": config.epochs,
                "tune.seed": config.seed,
                "tune.pruner": search.pruner_name(config),
                "train.effective_precision": job.precision,
            }
            | search.described(config, job.grid, job.searched)
        )
        summary = read_json(paths.data_summary_file(workload))
        mlflow_logs.log_datasets(mlflow_logs.datasets(data, summary))
        per_epoch = search.batches_per_epoch(len(data["x_train"]), job.batch_size)
        study = search.create_study(config, job.grid, per_epoch)
        study.optimize(lambda trial: run_trial(job, trial),
                       n_trials=search.budget(config, job.grid), catch=())  # fmt: skip
        trials = job.trials
        best = search.best_hyperparameters(trials, name)
        epochs_trained = round(sum(t["epochs"] for t in trials), 2)
        pruned = sum(t["pruned"] for t in trials)
        mlflow.log_metrics({f"best_{key}": value for key, value in best.items()}
                           | {"epochs_trained": epochs_trained, "trials_pruned": pruned})
        mlflow.set_tag("best", search.trial_label(best))
    result = {
        "workload": workload, "optimizer": name, "space": config.space,
        "best_learning_rate": best["learning_rate"], "best": best, "trials": trials,
        "images": len(data["x_train"]), "epochs": config.epochs,
        "pruner": search.pruner_name(config), "precision": job.precision,
        "epochs_trained": epochs_trained, "seconds": round(sum(t["seconds"] for t in trials), 2),
        "mlflow_run_id": parent.info.run_id,
    }  # fmt: skip
    write_json_atomic(paths.tune_file(workload, name), result)
    write_json_atomic(paths.tuned_file(workload, name), {"optimizer": name} | best)
    log.info(
        "tune@%s: best %s; %d of %d trials pruned, %g epochs trained of %d",
        job.item, search.trial_label(best), pruned, len(trials), epochs_trained,
        len(trials) * config.epochs,
    )  # fmt: skip
    return result


def prepare(workload: str, name: str, params: dict[str, Any]) -> Search:
    """Check the params (every rate of the grid, or each end of the ranges, builds) and the
    store; load the subset."""
    spec = optimizer_spec(validate_optimizer_names(params["optimizers"]), name)
    model_config = workloads.workload(params, workload).model
    train_config = validate_train(params["train"])
    config = validate_tune(params["tune"])
    experiment_name = mlflow_store.validate_mlflow(params["mlflow"])
    grid = stats.log_grid(config.low, config.high, config.points)
    runtime.start(train_config.backend)  # before the first op: building an optimizer
    search.quiet_retracing_notices()
    searched = ()
    if config.space == "full":
        searched = searched_arguments(build_optimizer(name, spec), spec)
    for hyperparameters in search.ends(config, grid, searched):  # fail before any training
        build_optimizer(name, spec | hyperparameters)
    experiment_id = mlflow_store.setup_experiment(experiment_name)
    data = load_training_data(workload, model_config.num_classes, config.images)
    precision = set_precision(train_config.precision)
    item = stage_item(workload, name)
    tags = mlflow_runs.run_tags(f"tune@{item}") | {
        "workload": workload,
        "optimizer": name,
        mlflow_runs.DEVICE_TAG: runtime.training_device(),
        mlflow_runs.BACKEND_TAG: train_config.backend,
    }
    return Search(item, name, spec, model_config, train_config.batch_size, config, grid, searched,
                  data, precision, experiment_id, tags)  # fmt: skip


def run_trial(job: Search, trial: optuna.Trial) -> float:
    """Train one point of the search as a nested MLflow run; its validation accuracy, or
    optuna.TrialPruned when the pruner stopped it."""
    name, config, data = job.name, job.config, job.data
    hyperparameters = search.suggest(trial, config, job.grid, job.searched)
    keras.backend.clear_session()  # which resets the dtype policy too: set it again
    keras.mixed_precision.set_global_policy(job.precision)
    keras.utils.set_random_seed(config.seed)
    optimizer = build_optimizer(name, job.spec | hyperparameters)
    model = build_model(job.model_config, data["x_train"].shape[1:])
    pruning = search.PruneWeakTrial(trial, config, data, job.batch_size)
    tags = job.tags | {"trial": "true"}
    label = search.trial_label(hyperparameters)
    with mlflow_runs.tracked_run(job.experiment_id, f"{name} {label}", tags, nested=True):
        mlflow.log_params(
            {
                "workload": job.tags["workload"],
                "optimizer": name,
                "train.effective_precision": model.dtype_policy.name,  # what it trains in
            }
            | {f"optimizer.{key}": value for key, value in hyperparameters.items()}
        )
        start = time.perf_counter()
        with contextlib.suppress(optuna.TrialPruned):  # the pruner stopped it: a result
            fit_model(model, optimizer, data, config.epochs, job.batch_size,
                      callbacks=[pruning])  # fmt: skip
        seconds = time.perf_counter() - start
        reason = search.stop_reason(pruning, config)
        for step, _, _, judged in pruning.reports:
            mlflow.log_metric("judged_val_accuracy", judged, step=step)
        mlflow.log_metric("epochs_reached", pruning.epochs_reached)
        mlflow.set_tags({"pruned": str(pruning.pruned_at is not None).lower(), "stopped": reason})
        if pruning.diverged:  # no result: the search never chooses it
            mlflow_runs.end_diverged(math.ceil(pruning.epochs_reached))
    _, val_loss, _, value = pruning.reports[-1]
    job.trials.append({
        "learning_rate": hyperparameters["learning_rate"], "hyperparameters": hyperparameters,
        "val_accuracy": None if pruning.diverged else value, "val_loss": val_loss,
        "epochs": pruning.epochs_reached, "pruned": pruning.pruned_at is not None,
        "diverged": pruning.diverged, "stopped": reason, "seconds": round(seconds, 2),
    })  # fmt: skip
    log.info("tune@%s: %s -> val_accuracy %.4f, %s", job.item, label, value, reason)
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(reason)
    return value


def main(argv: list[str]) -> None:
    params = load_params()
    tune(*stage_args("tune", argv, ("workload", "optimizer"), params), params)


if __name__ == "__main__":
    run_stage(main)
