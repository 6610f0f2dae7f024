"""Stage `train@<optimizer>-<seed>`: train the CNN with one optimizer (a key of `optimizers`
in params.yaml) from one seed (one of `train.seeds`), log the run to MLflow. Writes
models/<run>.keras, metrics/history/<run>.csv (per epoch) and metrics/train/<run>.json (with
the MLflow run id and the run's configuration id). With `--tuned` (stage `train_tuned@<optimizer>-<seed>`) it trains with the
best rate of `tune@<optimizer>` and writes the same files with a `-tuned` suffix; where that
rate makes the same configuration as the default run (the search kept the default rate), it
trains nothing: it copies the default run's files and tags its MLflow run as both settings'.

    python -m stages.train adam 42     # what `dvc repro train@adam-42` runs
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads TensorFlow without its start-up log
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import tensorflow as tf

from mnist_optimizers import mlflow_logs, mlflow_runs, mlflow_store, runtime
from mnist_optimizers.cli import dvc_stage_item, run_stage
from mnist_optimizers.errors import ParamsError, PipelineError, shown
from mnist_optimizers.files import (copy_atomic, load_training_data, read_json, write_csv,
                                    write_json_atomic)
from mnist_optimizers.fit import (TrainConfig, checkpoint_dir, configuration_id, fit_model,
                                  history_frame, run_params, set_precision, timed, validate_train)
from mnist_optimizers.model import build_model, save_model, validate_model
from mnist_optimizers.optimizers import (build_optimizer, learning_rate, optimizer_spec,
                                         validate_optimizer_names)
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import (DATA_SUMMARY_FILE, HISTORY_DIR, MODELS_DIR, TRAIN_METRICS_DIR,
                                    TUNED_RATE_DIR, run_key)

log = logging.getLogger(__name__)

# The MLflow tags that say which settings' tables a run stands in: both are "true" on a
# default run whose tuned rate was the same (filter: tags.tuned_setting = 'true').
SETTING_TAGS = {False: "default_setting", True: "tuned_setting"}


@dataclass
class Training:
    """One training run, ready to fit: what `prepare` checked, built and loaded."""

    key: str  # adam-42, adam-42-tuned
    stage: str  # train@adam-42, train_tuned@adam-42
    config: TrainConfig
    optimizer: keras.optimizers.Optimizer
    model: keras.Model
    data: dict[str, Any]
    data_summary: dict[str, Any]
    logged: dict[str, Any]  # params, with the seed, precision used and thread counts
    threads: runtime.Threads
    experiment_id: str
    seconds: dict[str, float]  # where the stage's time goes, for benchmarks/
    checkpoint: Path | None  # with `train.resume`: where the epochs are kept


def train(name: str, seed: int, params: dict[str, Any], tuned: bool = False) -> None:
    """Validate everything, check the tracking store, then train, log and save. ``tuned``
    trains with the best learning rate of `tune@<name>` (metrics/tuned_rate/<name>.json)."""
    job = prepare(name, seed, params, tuned)
    configuration = configuration_id(job.logged)
    if tuned and reuse_default_run(name, seed, configuration):
        return
    tags = mlflow_runs.run_tags(job.stage) | {
        "optimizer": name,
        "seed": str(seed),
        SETTING_TAGS[False]: str(not tuned).lower(),
        SETTING_TAGS[True]: str(tuned).lower(),
        "configuration": configuration,
        mlflow_runs.DEVICE_TAG: runtime.training_device(),
    }
    precision = job.logged["train.effective_precision"]
    log.info("%s: training on %s in %s", job.stage, tags[mlflow_runs.DEVICE_TAG], precision)
    with mlflow_runs.tracked_run(job.experiment_id, job.key, tags) as run:
        history = fit_and_log(job)
        last = history[-1]
        metrics = {
            "optimizer_class": type(job.optimizer).__name__,
            "learning_rate": learning_rate(job.optimizer),
            "precision": precision,
            "threads": asdict(job.threads),
            "epochs": len(history),
            **{k: last[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
            "train_seconds": round(job.seconds["fit"], 2),
            "mlflow_run_id": run.info.run_id,
            "configuration": configuration,
            "device": tags[mlflow_runs.DEVICE_TAG],
            "date": time.strftime("%Y-%m-%d", time.gmtime()),  # UTC: when its seconds were measured
        }
        save_outputs(job, history, metrics)
    if job.checkpoint is not None:
        shutil.rmtree(job.checkpoint, ignore_errors=True)  # the outputs are complete
    log.info("%s: val_accuracy %.4f in %.1f s", job.stage, last["val_accuracy"], job.seconds["fit"])


def tuned_rate(name: str) -> float:
    """The rate `tune@<name>` chose, checked where it is read (a hand-edited file is named,
    not `optimizers.<name>.learning_rate`)."""
    path = TUNED_RATE_DIR / f"{name}.json"
    rate = read_json(path, "learning_rate")["learning_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
        raise PipelineError(
            f"{path}: learning_rate: expected a positive number, got {shown(rate)}; rerun "
            f"the search: dvc repro --force tune@{name}"
        )
    return rate


def prepare(name: str, seed: int, params: dict[str, Any], tuned: bool) -> Training:
    """Check the params and the store, seed everything, load the data, build the model."""
    spec = optimizer_spec(validate_optimizer_names(params["optimizers"]), name)
    if tuned:
        spec = spec | {"learning_rate": tuned_rate(name)}
    model_config = validate_model(params["model"])
    train_config = validate_train(params["train"])
    if seed not in train_config.seeds:
        raise ParamsError(f"train.seeds: {seed} is not one of {list(train_config.seeds)}")
    experiment_name = mlflow_store.validate_mlflow(params["mlflow"])
    threads = runtime.configure_threads()  # before the first TensorFlow op
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    optimizer = build_optimizer(name, spec)
    experiment_id = mlflow_store.setup_experiment(experiment_name)
    key = run_key(name, seed, tuned)
    seconds: dict[str, float] = {}
    with timed(seconds, "load_data"):
        data = load_training_data(model_config.num_classes)
        data_summary = read_json(DATA_SUMMARY_FILE)
    precision = set_precision(train_config.precision)
    model = build_model(model_config, data["x_train"].shape[1:])
    run = run_params(name, optimizer, model_config, train_config, model, data_summary)
    logged = run | {
        "train.seed": seed,
        "train.effective_precision": precision,
        "runtime.intra_op_threads": threads.intra_op,
        "runtime.inter_op_threads": threads.inter_op,
    }
    stage = f"train_tuned@{run_key(name, seed)}" if tuned else f"train@{key}"
    identity = {"params": run, "seed": seed, "data": data_summary}
    checkpoint = checkpoint_dir(key, identity) if train_config.resume else None
    return Training(key, stage, train_config, optimizer, model, data, data_summary, logged,
                    threads, experiment_id, seconds, checkpoint)  # fmt: skip


def fit_and_log(job: Training) -> list[dict[str, float]]:
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


def save_outputs(job: Training, history: list[dict[str, float]], metrics: dict) -> None:
    """Model, history, then the metrics file last: a failure leaves no complete-looking set."""
    with timed(job.seconds, "save_model"):
        save_model(job.model, MODELS_DIR / f"{job.key}.keras")
    write_csv(HISTORY_DIR / f"{job.key}.csv", history_frame(history))
    rounded = {part: round(value, 3) for part, value in job.seconds.items()}
    write_json_atomic(TRAIN_METRICS_DIR / f"{job.key}.json", metrics | {"seconds": rounded})


def reuse_default_run(name: str, seed: int, configuration: str) -> bool:
    """Where the tuned run of ``name`` and ``seed`` would be the same configuration as its
    default run, take the default run's model, history and metrics as the tuned run's,
    tag its MLflow run as the tuned setting's too, and return True; else return False."""
    default_key, key = run_key(name, seed), run_key(name, seed, tuned=True)
    default = read_json(
        TRAIN_METRICS_DIR / f"{default_key}.json", "mlflow_run_id", "learning_rate"
    )
    if default.get("configuration") != configuration:
        return False
    mlflow_logs.log_to_run(default_key, default["mlflow_run_id"], {}, {}, {SETTING_TAGS[True]: "true"})
    copy_atomic(MODELS_DIR / f"{default_key}.keras", MODELS_DIR / f"{key}.keras")
    copy_atomic(HISTORY_DIR / f"{default_key}.csv", HISTORY_DIR / f"{key}.csv")
    write_json_atomic(TRAIN_METRICS_DIR / f"{key}.json", default | {"reused": default_key})
    log.info("train_tuned@%s: the tuned rate %g is the default run's configuration: %s's model "
             "and MLflow run %s reused, nothing trained", default_key, default["learning_rate"],
             default_key, default["mlflow_run_id"])  # fmt: skip
    return True


def matrix_item(item: str, params: dict[str, Any]) -> list[str]:
    """The optimizer and seed of params.yaml that DVC named the stage after (`adam-42`), as
    given (checked by ``train``): DVC joins them with '-', which a path in one may hold too."""
    def listed(value: Any) -> list:
        return value if isinstance(value, list) else []

    seeds = listed((params.get("train") or {}).get("seeds"))
    for name in listed(params.get("compare")):
        for seed in seeds:
            if f"{name}-{seed}" == item:
                return [str(name), str(seed)]
    raise ParamsError(f"$DVC_STAGE: {item!r} is no optimizer and seed of compare and train.seeds")


def main(argv: list[str]) -> None:
    usage = "usage: python -m stages.train <optimizer name from params.yaml> <seed> [--tuned]"
    tuned = "--tuned" in argv
    argv = [arg for arg in argv if arg != "--tuned"]
    params = load_params()
    if not argv:  # as DVC runs it
        argv = matrix_item(dvc_stage_item("train_tuned" if tuned else "train", usage), params)
    if len(argv) != 2:
        raise ParamsError(usage)
    try:
        seed = int(argv[1])
    except ValueError:
        raise ParamsError(f"{usage}; got seed {shown(argv[1])}") from None
    train(argv[0], seed, params, tuned)


if __name__ == "__main__":
    run_stage(main)
