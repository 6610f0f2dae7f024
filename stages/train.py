"""Stage `train@<workload>-<optimizer>-<seed>`: train a workload's model with one optimizer
from one seed, log the run to MLflow; write models/<workload>/<run>.keras,
metrics/history/<workload>/<run>.csv (per epoch), metrics/train/<workload>/<run>.json (with the
MLflow run id and the configuration id). `--tuned` (`train_tuned@...`): with what
`tune@<workload>-<optimizer>` chose, files suffixed `-tuned`; where that makes the default
run's configuration, nothing trains: the default run's files are copied and its MLflow run
tagged as both settings'.

    python -m stages.train mnist_cnn adam 42   # what `dvc repro train@mnist_cnn-adam-42` runs
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads Keras on train.backend, quietly
import logging
import shutil
import time
from dataclasses import asdict
from typing import Any

import keras
import mlflow

from mnist_optimizers import fit, mlflow_logs, mlflow_runs, mlflow_store, paths, runtime, workloads
from mnist_optimizers.cli import run_stage, stage_args
from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.files import (copy_atomic, load_training_data, read_json, write_csv,
                                    write_json_atomic)  # fmt: skip
from mnist_optimizers.fit import (checkpoint_dir, configuration_id, diverged_at,
                                  fit_model, history_frame, run_params, set_precision, timed,
                                  validate_train)
from mnist_optimizers.model import build_model, save_model
from mnist_optimizers.optimizers import (build_optimizer, learning_rate, optimizer_spec,
                                         tuned_hyperparameters, validate_optimizer_names)
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import run_key, stage_item

log = logging.getLogger(__name__)

# Which settings' tables a run stands in: both "true" on a default run its tuned rate reused.
SETTING_TAGS = {False: "default_setting", True: "tuned_setting"}


def train(workload: str, name: str, seed: int, params: dict[str, Any], tuned: bool = False) -> None:
    """Validate everything, check the tracking store, then train, log and save. ``tuned``
    trains with the hyperparameters `tune@<workload>-<name>` chose
    (metrics/tuned/<workload>/<name>.json)."""
    job = prepare(workload, name, seed, params, tuned)
    configuration = configuration_id(job.logged)
    if tuned and reuse_default_run(workload, name, seed, configuration):
        return
    tags = mlflow_runs.run_tags(job.stage) | {
        "workload": workload,
        "optimizer": name,
        "seed": str(seed),
        SETTING_TAGS[False]: str(not tuned).lower(),
        SETTING_TAGS[True]: str(tuned).lower(),
        "configuration": configuration,
        mlflow_runs.DEVICE_TAG: runtime.training_device(),
        mlflow_runs.BACKEND_TAG: job.config.backend,
    }
    precision = job.logged["train.effective_precision"]
    log.info("%s: training on %s with %s in %s", job.stage, tags[mlflow_runs.DEVICE_TAG],
             job.config.backend, precision)  # fmt: skip
    with mlflow_runs.tracked_run(job.experiment_id, f"{workload}/{job.key}", tags) as run:
        history = fit_and_log(job)
        last, diverged = history[-1], diverged_at(history)
        if diverged is not None:  # its numbers are no result: none is written as one
            last = dict.fromkeys(last) | {"diverged": True, "diverged_at_epoch": diverged}
        metrics = {
            "workload": workload,
            "optimizer_class": type(job.optimizer).__name__,
            "learning_rate": learning_rate(job.optimizer),
            "precision": precision,
            "threads": asdict(job.threads),
            "epochs": len(history),
            **{k: last[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "diverged": last.get("diverged", False),
            **({"diverged_at_epoch": diverged} if diverged is not None else {}),
            "train_seconds": round(job.seconds["fit"], 2),
            "mlflow_run_id": run.info.run_id,
            "configuration": configuration,
            "device": tags[mlflow_runs.DEVICE_TAG],
            "date": time.strftime("%Y-%m-%d", time.gmtime()),  # UTC: when its seconds were measured
        }
        save_outputs(job, history, metrics)
        if diverged is not None:
            log.warning("%s: the loss went NaN or infinite at epoch %d: recorded as diverged, "
                        "not as a result (MLflow run FAILED)", job.stage, diverged)  # fmt: skip
            mlflow_runs.end_diverged(diverged)
    if job.checkpoint is not None:
        shutil.rmtree(job.checkpoint, ignore_errors=True)  # the outputs are complete
    if diverged is None:
        log.info("%s: val_accuracy %.4f in %.1f s", job.stage, last["val_accuracy"],
                 job.seconds["fit"])  # fmt: skip


def prepare(
    workload: str, name: str, seed: int, params: dict[str, Any], tuned: bool
) -> fit.Training:
    """Check the params and the store, seed everything, load the data, build the model."""
    spec = optimizer_spec(validate_optimizer_names(params["optimizers"]), name)
    model_config = workloads.workload(params, workload).model
    if tuned:
        spec = spec | tuned_hyperparameters(workload, name)
    train_config = validate_train(params["train"])
    if seed not in train_config.seeds:
        raise ParamsError(f"train.seeds: {seed} is not one of {list(train_config.seeds)}")
    experiment_name = mlflow_store.validate_mlflow(params["mlflow"])
    threads = runtime.start(train_config.backend)  # before the first op
    keras.utils.set_random_seed(seed)
    optimizer = build_optimizer(name, spec)
    experiment_id = mlflow_store.setup_experiment(experiment_name)
    key = run_key(name, seed, tuned)
    seconds: dict[str, float] = {}
    with timed(seconds, "load_data"):
        data = load_training_data(workload, model_config.num_classes)
        data_summary = read_json(paths.data_summary_file(workload))
    precision = set_precision(train_config.precision)
    model = build_model(model_config, data["x_train"].shape[1:])
    run = run_params(name, optimizer, model_config, train_config, model, data_summary)
    logged = run | {
        "workload": workload,
        "data.dataset": data_summary["dataset"],
        "train.seed": seed,
        "train.effective_precision": precision,
        "runtime.intra_op_threads": threads.intra_op,
        "runtime.inter_op_threads": threads.inter_op,
    }
    stage = f"{'train_tuned' if tuned else 'train'}@{stage_item(workload, name, seed)}"
    identity = {"params": run, "seed": seed, "data": data_summary}
    checkpoint = checkpoint_dir(f"{workload}-{key}", identity) if train_config.resume else None
    return fit.Training(workload, key, stage, train_config, optimizer, model, data, data_summary,
                        logged, threads, experiment_id, seconds, checkpoint)  # fmt: skip


def fit_and_log(job: fit.Training) -> list[dict[str, float]]:
    """Log the params and datasets, fit (from a checkpoint with `train.resume`), log the
    model; return the history, one row per epoch."""
    seconds = job.seconds
    with timed(seconds, "mlflow_logging"):
        mlflow.log_params(job.logged)
        mlflow_logs.log_datasets(mlflow_logs.datasets(job.data, job.data_summary))
    with timed(seconds, "fit"):
        tracker = fit_model(job.model, job.optimizer, job.data, job.config.epochs,
                            job.config.batch_size, job.checkpoint)  # fmt: skip
    # The per-epoch metrics were logged during fit: count them as logging, not fitting.
    seconds["fit"] -= tracker.logging_seconds
    seconds["mlflow_logging"] += tracker.logging_seconds
    with timed(seconds, "mlflow_logging"):
        mlflow_logs.log_model(job.model, example=job.data["x_val"][:5])
        mlflow.log_metric("train_seconds", seconds["fit"])
    return tracker.history


def save_outputs(job: fit.Training, history: list[dict[str, float]], metrics: dict) -> None:
    """Model, history, then the metrics file last: a failure leaves no complete-looking set."""
    with timed(job.seconds, "save_model"):
        identity = {k: metrics[k] for k in ("mlflow_run_id", "configuration")}
        save_model(job.model, paths.model_file(job.workload, job.key), identity | {"run": job.key})
    write_csv(paths.history_file(job.workload, job.key), history_frame(history))
    seconds = {"seconds": {part: round(value, 3) for part, value in job.seconds.items()}}
    write_json_atomic(paths.train_metrics_file(job.workload, job.key), metrics | seconds)


def reuse_default_run(workload: str, name: str, seed: int, configuration: str) -> bool:
    """Where the tuned run of ``name`` and ``seed`` would be the same configuration as its
    default run, take the default run's model, history and metrics as the tuned run's,
    tag its MLflow run as the tuned setting's too, and return True; else return False."""
    default_key, key = run_key(name, seed), run_key(name, seed, tuned=True)
    default = read_json(
        paths.train_metrics_file(workload, default_key), "mlflow_run_id", "learning_rate"
    )
    if default.get("configuration") != configuration:
        return False
    label = f"{workload}/{default_key}"
    mlflow_logs.log_to_run(label, default["mlflow_run_id"], {}, {}, {SETTING_TAGS[True]: "true"})
    for file in (paths.model_file, paths.history_file):
        copy_atomic(file(workload, default_key), file(workload, key))
    write_json_atomic(paths.train_metrics_file(workload, key), default | {"reused": default_key})
    log.info("train_tuned@%s: the tuned rate %g is the default run's configuration: %s's model "
             "and MLflow run %s reused, nothing trained", stage_item(workload, name, seed),
             default["learning_rate"], label, default["mlflow_run_id"])  # fmt: skip
    return True


def main(argv: list[str]) -> None:
    tuned, params = "--tuned" in argv, load_params()
    kind, argv = ("train_tuned" if tuned else "train"), [a for a in argv if a != "--tuned"]
    workload, name, seed = stage_args(kind, argv, ("workload", "optimizer", "seed"), params)
    try:
        number = int(seed)
    except ValueError:
        raise ParamsError(f"train.seeds: expected an integer, got seed {shown(seed)}") from None
    train(workload, name, number, params, tuned)


if __name__ == "__main__":
    run_stage(main)
