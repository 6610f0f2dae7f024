"""The learning-rate search of stage `tune`: Optuna's grid sampler over log-spaced rates,
with its successive-halving pruner stopping weak trials after their first epochs.

Each trial reports its validation accuracy after every epoch; the pruner keeps a trial
going past a rung (`min_epochs`, then `min_epochs` x `reduction_factor`, ...) only if it is
among the best 1/`reduction_factor` of the trials that reached that rung. The best rate is
chosen among the trials that completed every epoch, on validation accuracy only.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import optuna
import pandas as pd

from mnist_optimizers import stats
from mnist_optimizers.sections.tune import TuneConfig


def create_study(config: TuneConfig, grid: list[float]) -> optuna.Study:
    """An in-memory study that tries every rate of ``grid`` once, in an order fixed by
    `tune.seed`, pruning by successive halving unless `tune.prune` is false."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says each trial
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if config.prune:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_epochs, reduction_factor=config.reduction_factor
        )
    return optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.GridSampler({"learning_rate": grid}, seed=config.seed),
        pruner=pruner,
    )


def suggest_rate(trial: optuna.Trial, grid: list[float]) -> float:
    """The trial's learning rate: the next point of the grid."""
    return trial.suggest_float("learning_rate", grid[0], grid[-1], log=True)


def judged_value(row: dict[str, float]) -> float:
    """What a trial is judged on: its validation accuracy; a diverged one (NaN loss) gets 0,
    so it ranks last instead of poisoning the comparison."""
    return 0.0 if math.isnan(row["val_loss"]) else float(row["val_accuracy"])


class PruneWeakTrial(keras.callbacks.Callback):
    """After every epoch, report the judged value to the Optuna trial; stop the fit when the
    pruner says the trial is not among the best at its rung. ``pruned_after`` is then the
    last epoch it trained."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial = trial
        self.pruned_after: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        value = judged_value({"val_loss": logs["val_loss"], "val_accuracy": logs["val_accuracy"]})
        self.trial.report(value, epoch + 1)
        if self.trial.should_prune():
            self.pruned_after = epoch + 1
            self.model.stop_training = True


def stop_reason(pruned_after: int | None, epochs: int, config: TuneConfig) -> str:
    """Why a trial stopped, in words for the MLflow run and the tuning table."""
    if pruned_after is None:
        return f"completed all {epochs} epochs"
    return (
        f"pruned after epoch {pruned_after} of {epochs}: not among the best "
        f"1/{config.reduction_factor} of the trials at that rung (successive halving)"
    )


def best_rate(trials: list[dict[str, Any]]) -> float:
    """The best learning rate among the trials that completed every epoch (a pruned trial's
    accuracy after fewer epochs is not comparable)."""
    complete = pd.DataFrame([t for t in trials if not t["pruned"]])
    return stats.best_learning_rate(complete)
