"""The `train` section and fitting: precision, the per-epoch tracker, checkpoints and resume,
and the identity of a training run (its configuration digest).

Shared by every stage that trains (train, tune, gd_variants); the stages choose the data,
the optimizer and the budget.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from mnist_optimizers import runtime
from mnist_optimizers.backend import DEFAULT as DEFAULT_BACKEND
from mnist_optimizers.backend import gpus, validate_backend
from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.files import atomic_path, write_json_atomic
from mnist_optimizers.architecture import ModelConfig
from mnist_optimizers.optimizers import logged_config
from mnist_optimizers.params import check_keys, positive_int, seed
from mnist_optimizers.paths import CHECKPOINTS_DIR

PRECISIONS = ("auto", "float32", "mixed_bfloat16")
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
HISTORY_FILE = "history.json"  # in a checkpoint folder: the epochs its weights hold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    seeds: tuple[int, ...]  # one training run per optimizer and seed
    precision: str = "float32"  # auto, or a Keras dtype policy: float32, mixed_bfloat16
    resume: bool = False  # keep an epoch checkpoint and continue from it after a stop
    backend: str = DEFAULT_BACKEND  # the Keras backend: tensorflow or jax


def validate_train(section: Any) -> TrainConfig:
    """Check the `train` section: positive epochs and batch size, a list of distinct
    non-negative integer seeds, a precision, a backend."""
    keys = ("epochs", "batch_size", "seeds", "precision", "resume", "backend")
    check_keys(section, keys, "train", ("epochs", "batch_size", "seeds"))
    seeds = section["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise ParamsError(f"train.seeds: expected a non-empty list of seeds, got {shown(seeds)}")
    for i, value in enumerate(seeds):
        seed(value, f"train.seeds[{i}]")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"train.seeds: each seed once, got {shown(seeds)}")
    precision = section.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ParamsError(
            f"train.precision: expected one of {', '.join(PRECISIONS)}, got {shown(precision)}"
        )
    resume = section.get("resume", False)
    if not isinstance(resume, bool):
        raise ParamsError(f"train.resume: expected true or false, got {shown(resume)}")
    return TrainConfig(
        epochs=positive_int(section["epochs"], "train.epochs"),
        batch_size=positive_int(section["batch_size"], "train.batch_size"),
        seeds=tuple(seeds),
        precision=precision,
        resume=resume,
        backend=validate_backend(section.get("backend", DEFAULT_BACKEND)),
    )


def effective_precision(requested: str) -> str:
    """The dtype policy to train with. ``auto``: mixed_bfloat16 where the hardware computes
    bfloat16 fast (``runtime.cpu_bf16_is_fast``, a GPU of compute capability 8.0 or later),
    float32 elsewhere (on a GPU machine, the GPU decides). ``mixed_bfloat16`` on a CPU
    without BF16 instructions: float32, with a warning. ``float32``: float32."""
    if requested == "auto":  # on a GPU, where the model trains, the GPU decides
        on_gpu = bool(gpus())
        fast = runtime.gpu_has_bf16() if on_gpu else runtime.cpu_bf16_is_fast()
        return "mixed_bfloat16" if fast else "float32"
    if requested != "mixed_bfloat16" or runtime.cpu_has_bf16() or gpus():
        return requested
    log.warning(
        "train.precision: mixed_bfloat16 needs a CPU with BF16 instructions (avx512_bf16, "
        "amx_bf16 or Arm bf16) and this one has none; training in float32 instead"
    )
    return "float32"


def set_precision(requested: str) -> str:
    """Set Keras' global dtype policy to the ``effective_precision``; return it."""
    precision = effective_precision(requested)
    keras.mixed_precision.set_global_policy(precision)
    return precision


class EpochTracker(keras.callbacks.Callback):
    """Times each epoch, adds `epoch_seconds` to its logs and sends them to MLflow
    with step = epochs completed (1, 2, ...); counts the seconds spent logging."""

    def __init__(self, history: list[dict[str, float]] | None = None) -> None:
        """``history``: the epochs a resumed training already has."""
        super().__init__()
        self.history: list[dict[str, float]] = list(history or [])
        self.logging_seconds = 0.0
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {key: float(value) for key, value in (logs or {}).items()}
        row["epoch_seconds"] = time.perf_counter() - self._start
        before_logging = time.perf_counter()
        mlflow.log_metrics(row, step=epoch + 1)
        self.logging_seconds += time.perf_counter() - before_logging
        self.history.append({"epoch": epoch + 1, **row})
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in row.items()))


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch, save the weights and optimizer state as `epoch-<n>.weights.h5`,
    then the history so far as `history.json`, each atomically: a stop at any moment
    leaves the last complete pair. (Keras' BackupAndRestore writes its file in place, and a
    SIGTERM during that write left a file it could not load.)"""

    def __init__(self, folder: Path, tracker: EpochTracker) -> None:
        super().__init__()
        self.folder = folder
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        weights = self.folder / f"epoch-{epoch + 1}.weights.h5"
        with atomic_path(weights, suffix=".weights.h5", output=False) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        write_json_atomic(self.folder / HISTORY_FILE, self.tracker.history, output=False)
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)


def checkpoint_dir(key: str, config: dict[str, Any]) -> Path:
    """The checkpoint folder of one training and configuration: a checkpoint made with other
    params or data is never resumed, it is simply not found."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return CHECKPOINTS_DIR / f"{key}-{digest[:16]}"


def resume_from(folder: Path, model: keras.Model) -> list[dict[str, float]]:
    """Load the last complete checkpoint in ``folder`` into ``model`` (weights and optimizer
    state); return the history of the epochs it holds, or [] to start from scratch."""
    try:
        history = json.loads((folder / HISTORY_FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        return discard(folder, folder / HISTORY_FILE, exc)
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return discard(folder, folder / HISTORY_FILE, ValueError("not a list of epochs"))
    weights = folder / f"epoch-{len(history)}.weights.h5"
    if not history or not weights.exists():
        return []
    model.optimizer.build(model.trainable_variables)  # so that its state can be loaded
    variables = [*model.weights, *model.optimizer.variables]
    initial = [v.numpy() for v in variables]
    try:
        model.load_weights(weights)
    except (OSError, ValueError, KeyError) as exc:  # a damaged file (h5py, Keras): start over
        for variable, value in zip(variables, initial, strict=True):
            variable.assign(value)  # what loading had set before it failed
        return discard(folder, weights, exc)
    return history


def discard(folder: Path, culprit: Path, exc: BaseException) -> list[dict[str, float]]:
    """Delete a checkpoint that does not load, naming the file and why; return [] (train
    from the first epoch)."""
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    log.warning(
        "checkpoint %s does not load (%s): discarded, training starts from the first epoch",
        culprit,
        reason,
    )
    shutil.rmtree(folder, ignore_errors=True)
    return []


def fit_model(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    data: dict[str, np.ndarray],
    epochs: int,
    batch_size: int,
    checkpoint: Path | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> EpochTracker:
    """Compile and fit; return the tracker that holds one row per epoch and its seconds.
    With ``checkpoint``, keep the weights, optimizer state and history there after every
    epoch, and continue from them if an earlier run left them. ``callbacks`` run after the
    tracker (a pruning callback sees the epoch's logged metrics)."""
    # Integer labels with the sparse loss: the same categorical cross-entropy, no one-hot copy.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    done: list[dict[str, float]] = []
    if checkpoint is not None:
        done = resume_from(checkpoint, model)
        if done:
            log.info("resuming from %s after epoch %d of %d", checkpoint, len(done), epochs)
            for row in done:  # the new MLflow run gets the whole history
                mlflow.log_metrics(
                    {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
                )
            mlflow.set_tag("resumed_after_epoch", str(len(done)))
    tracker = EpochTracker(done)
    # A NaN or infinite loss ends the fit after that epoch: nothing after it is training.
    every: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN(), tracker]
    if checkpoint is not None:
        every.append(EpochCheckpoint(checkpoint, tracker))
    every += callbacks or []
    model.fit(
        data["x_train"],
        data["y_train"],
        validation_data=(data["x_val"], data["y_val"]),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=every,
        initial_epoch=len(done),
        verbose=1 if sys.stdout.isatty() else 0,  # bars on a terminal; EpochTracker logs each epoch
    )
    return tracker


def diverged_at(history: list[dict[str, float]]) -> int | None:
    """The first epoch whose training or validation loss is NaN or infinite, or None."""
    for row in history:
        if not all(math.isfinite(row[k]) for k in ("loss", "val_loss")):
            return int(row["epoch"])
    return None


@contextlib.contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``seconds[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


def history_frame(history: list[dict[str, float]]) -> pd.DataFrame:
    """The per-epoch history as the table `metrics/history/<run>.csv` holds."""
    return pd.DataFrame(history, columns=list(HISTORY_FIELDS))


def run_params(
    name: str,
    optimizer: keras.optimizers.Optimizer,
    model_config: ModelConfig,
    train_config: TrainConfig,
    model: keras.Model,
    data_summary: dict[str, Any],
) -> dict[str, Any]:
    """Every param of the run, flat: the optimizer as Keras really built it (defaults
    included), the training settings, the architecture and the data it saw."""
    params: dict[str, Any] = {"optimizer": name, "optimizer.class": type(optimizer).__name__}
    params |= {f"optimizer.{k}": v for k, v in logged_config(optimizer).items()}
    params |= {f"train.{k}": v for k, v in asdict(train_config).items()}
    params |= {f"model.{k}": v for k, v in asdict(model_config).items()}
    params["model.parameters"] = model.count_params()
    params["loss"] = "categorical cross-entropy (sparse integer labels)"
    params |= {f"data.{split}_images": n for split, n in data_summary["counts"].items()}
    params["data.subset"] = data_summary["subset"]
    params["data.val_fraction"] = data_summary["val_fraction"]
    params |= {f"data.sha256.{file}": digest for file, digest in data_summary["sha256"].items()}
    return params


# Logged params that do not change a run's result: the optimizer's name in params.yaml (its
# class and every argument Keras uses count), the other runs' seeds, checkpointing, and the
# precision asked for (the one used counts).
# The workload's and data set's names are not either: the model and the data's SHA-256 are.
NOT_IN_CONFIGURATION = ("optimizer", "train.seeds", "train.resume", "train.precision",
                        "workload", "data.dataset")  # fmt: skip


def configuration_id(logged: dict[str, Any]) -> str:
    """The identity of a training run: a digest of the logged params that determine its
    result (optimizer class and arguments after tuning, model, data, epochs, batch size,
    precision used, seed, thread counts). Two runs with one id give the same model."""
    identity = {k: v for k, v in logged.items() if k not in NOT_IN_CONFIGURATION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Training:
    """One training run, ready to fit: what `prepare` checked, built and loaded."""

    workload: str  # mnist_cnn
    key: str  # adam-42, adam-42-tuned: its files in the workload's folders
    stage: str  # train@mnist_cnn-adam-42, train_tuned@mnist_cnn-adam-42
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
