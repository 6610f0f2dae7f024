"""Stage `train@<optimizer>-<seed>`: train the CNN with one optimizer from one seed, log the
run to MLflow.

`<optimizer>` is a key of `optimizers` in params.yaml. Its value holds the constructor
arguments of a Keras optimizer; the class is the key itself (`adam` -> `keras.optimizers.Adam`)
unless the entry names it with `class:`. `<seed>` is one of `train.seeds`. Writes
models/<optimizer>-<seed>.keras, a per-epoch history (metrics/history/<optimizer>-<seed>.csv)
and metrics/train/<optimizer>-<seed>.json, which holds the MLflow run id and the run's
configuration id. With `--tuned` (stage `train_tuned@<optimizer>-<seed>`) it trains with the
best rate of `tune@<optimizer>` and writes the same files with a `-tuned` suffix; where that
rate makes the same configuration as the default run (the search kept the default rate), it
trains nothing: it copies the default run's files and tags its MLflow run as both settings'.

    python -m stages.train adam 42     # what `dvc repro train@adam-42` runs
"""

from __future__ import annotations

import mnist_optimizers.quiet  # noqa: F401  first: loads TensorFlow without its start-up log
import logging
import shutil
from dataclasses import asdict
from typing import Any

import keras
import mlflow
import tensorflow as tf

from mnist_optimizers import runtime, tracking
from mnist_optimizers.cli import run_stage
from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.files import (
    copy_atomic,
    load_training_data,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from mnist_optimizers.fit import (
    checkpoint_dir,
    configuration_id,
    fit_model,
    history_csv,
    run_params,
    set_precision,
    timed,
    training_device,
    validate_train,
)
from mnist_optimizers.model import build_model, save_model, validate_model
from mnist_optimizers.optimizers import (
    build_optimizer,
    learning_rate,
    optimizer_spec,
    validate_optimizer_names,
)
from mnist_optimizers.params import load_params
from mnist_optimizers.paths import (
    DATA_SUMMARY_FILE,
    HISTORY_DIR,
    MODELS_DIR,
    TRAIN_METRICS_DIR,
    TUNED_RATE_DIR,
    run_key,
)

log = logging.getLogger(__name__)

# The MLflow tags that say which settings' tables a run stands in: both are "true" on a
# default run whose tuned rate was the same (filter: tags.tuned_setting = 'true').
SETTING_TAGS = {False: "default_setting", True: "tuned_setting"}


def train(name: str, seed: int, params: dict[str, Any], tuned: bool = False) -> None:
    """Validate everything, check the tracking store, then train, log and save. ``tuned``
    trains with the best learning rate of `tune@<name>` (metrics/tuned_rate/<name>.json)."""
    spec = optimizer_spec(validate_optimizer_names(params["optimizers"]), name)
    if tuned:
        spec = spec | {"learning_rate": read_json(TUNED_RATE_DIR / f"{name}.json")["learning_rate"]}
    model_config = validate_model(params["model"])
    train_config = validate_train(params["train"])
    if seed not in train_config.seeds:
        raise ParamsError(f"train.seeds: {seed} is not one of {list(train_config.seeds)}")
    experiment_name = tracking.validate_mlflow(params["mlflow"])
    threads = runtime.configure_threads()  # before the first TensorFlow op
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    optimizer = build_optimizer(name, spec)
    experiment_id = tracking.setup_experiment(experiment_name)
    key = run_key(name, seed, tuned)

    seconds: dict[str, float] = {}  # where the stage's time goes, for benchmarks/
    with timed(seconds, "load_data"):
        data = load_training_data(model_config.num_classes)
        data_summary = read_json(DATA_SUMMARY_FILE)
    precision = set_precision(train_config.precision)
    model = build_model(model_config, data["x_train"].shape[1:])

    stage = f"train_tuned@{run_key(name, seed)}" if tuned else f"train@{key}"
    params = run_params(name, optimizer, model_config, train_config, model, data_summary)
    logged = params | {
        "train.seed": seed,
        "train.effective_precision": precision,
        "runtime.intra_op_threads": threads.intra_op,
        "runtime.inter_op_threads": threads.inter_op,
    }
    configuration = configuration_id(logged)
    if tuned and reuse_default_run(name, seed, configuration):
        return
    tags = tracking.run_tags(stage) | {
        "optimizer": name,
        "seed": str(seed),
        SETTING_TAGS[False]: str(not tuned).lower(),
        SETTING_TAGS[True]: str(tuned).lower(),
        "configuration": configuration,
        tracking.DEVICE_TAG: training_device(),
    }
    log.info("%s: training on %s in %s", stage, tags[tracking.DEVICE_TAG], precision)
    with tracking.tracked_run(experiment_id, key, tags) as run:
        with timed(seconds, "mlflow_logging"):
            mlflow.log_params(logged)
            tracking.log_datasets(tracking.datasets(data, data_summary))
        checkpoint = None
        if train_config.resume:
            checkpoint = checkpoint_dir(key, {"params": params, "seed": seed, "data": data_summary})
        with timed(seconds, "fit"):
            tracker = fit_model(
                model, optimizer, data, train_config.epochs, train_config.batch_size, checkpoint
            )
        # The per-epoch metrics were logged during fit: count them as logging, not fitting.
        seconds["fit"] -= tracker.logging_seconds
        seconds["mlflow_logging"] += tracker.logging_seconds
        with timed(seconds, "mlflow_logging"):
            tracking.log_model(model, example=data["x_val"][:5])
            mlflow.log_metric("train_seconds", seconds["fit"])
        history = tracker.history
        last = history[-1]
        metrics = {
            "optimizer_class": type(optimizer).__name__,
            "learning_rate": learning_rate(optimizer),
            "precision": precision,
            "threads": asdict(threads),
            "epochs": len(history),
            "loss": last["loss"],
            "accuracy": last["accuracy"],
            "val_loss": last["val_loss"],
            "val_accuracy": last["val_accuracy"],
            "train_seconds": round(seconds["fit"], 2),
            "mlflow_run_id": run.info.run_id,
            "configuration": configuration,
        }
        # Outputs last, the metrics file last of all: a failure leaves no complete-looking set.
        with timed(seconds, "save_model"):
            save_model(model, MODELS_DIR / f"{key}.keras")
        write_text_atomic(HISTORY_DIR / f"{key}.csv", history_csv(history))
        rounded = {part: round(value, 3) for part, value in seconds.items()}
        write_json_atomic(TRAIN_METRICS_DIR / f"{key}.json", metrics | {"seconds": rounded})
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)  # the outputs are complete
    log.info("%s: val_accuracy %.4f in %.1f s", stage, last["val_accuracy"], seconds["fit"])


def reuse_default_run(name: str, seed: int, configuration: str) -> bool:
    """Where the tuned run of ``name`` and ``seed`` would be the same configuration as its
    default run, take the default run's model, history and metrics as the tuned run's,
    tag its MLflow run as the tuned setting's too, and return True; else return False."""
    default_key, key = run_key(name, seed), run_key(name, seed, tuned=True)
    default = read_json(TRAIN_METRICS_DIR / f"{default_key}.json")
    if default.get("configuration") != configuration:
        return False
    tracking.log_to_run(default_key, default["mlflow_run_id"], {}, {}, {SETTING_TAGS[True]: "true"})
    copy_atomic(MODELS_DIR / f"{default_key}.keras", MODELS_DIR / f"{key}.keras")
    copy_atomic(HISTORY_DIR / f"{default_key}.csv", HISTORY_DIR / f"{key}.csv")
    write_json_atomic(TRAIN_METRICS_DIR / f"{key}.json", default | {"reused": default_key})
    log.info(
        "train_tuned@%s: the tuned rate %g is the default run's configuration: %s's model "
        "and MLflow run %s reused, nothing trained",
        default_key, default["learning_rate"], default_key, default["mlflow_run_id"],
    )  # fmt: skip
    return True


def main(argv: list[str]) -> None:
    usage = "usage: python -m stages.train <optimizer name from params.yaml> <seed> [--tuned]"
    tuned = "--tuned" in argv
    argv = [arg for arg in argv if arg != "--tuned"]
    if len(argv) != 2:
        raise ParamsError(usage)
    try:
        seed = int(argv[1])
    except ValueError:
        raise ParamsError(f"{usage}; got seed {shown(argv[1])}") from None
    train(argv[0], seed, load_params(), tuned)


if __name__ == "__main__":
    run_stage(main)
