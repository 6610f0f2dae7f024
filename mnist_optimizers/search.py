"""The search of stage `tune`: Optuna's grid sampler over log-spaced learning rates
(`tune.space: learning_rate`), or its quasi-random Sobol sampler over the learning rate and
the optimizer's other hyperparameters (`full`, Choi et al. 2019), with its
successive-halving pruner stopping weak trials early.

A full-space search draws `tune.trials` points of a scrambled Sobol sequence (seeded by
`tune.seed`) over the log of each range; Optuna draws the first trial at random (its
QMCSampler learns the space from it), the others are the sequence's first points.

Training progress is counted in batches, so that a rung can fall inside an epoch. Each
trial is judged on the whole validation split at every rung (`min_epochs` epochs' worth of
batches, then that times `reduction_factor`, ...) and at every epoch's end; past a rung it
goes on only if it is among the best 1/`reduction_factor` of the trials that reached that
rung. Optuna's pruner is asynchronous (ASHA): run one trial at a time, a trial that is the
best so far at a rung always goes on, so early trials are promoted more often than the
halving alone would (docs/benchmarks.md measures what that costs, with the first rung at one
epoch and at half of one, reduction factors 3 and 4). The best trial is chosen among the
trials that completed every epoch, on validation accuracy only.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import keras
import numpy as np
import optuna

from mnist_optimizers.errors import PipelineError
from mnist_optimizers.sections.tune import RANGE_OF, TuneConfig


def batches_per_epoch(images: int, batch_size: int) -> int:
    """The batches Keras runs in one epoch over ``images`` (the last one may be short)."""
    return math.ceil(images / batch_size)


def first_rung(config: TuneConfig, per_epoch: int) -> int:
    """The first rung, in batches: `min_epochs` epochs' worth, at least one batch."""
    return max(1, round(config.min_epochs * per_epoch))


def rungs(config: TuneConfig, per_epoch: int) -> list[int]:
    """The batch counts at which the pruner judges a trial, before its last batch."""
    total = config.epochs * per_epoch
    rung = first_rung(config, per_epoch)
    points = []
    while rung < total:
        points.append(rung)
        rung *= config.reduction_factor
    return points


def budget(config: TuneConfig, grid: list[float]) -> int:
    """The trials a search runs: every rate of the grid, or `tune.trials` points."""
    return len(grid) if config.space == "learning_rate" else config.trials


def create_study(config: TuneConfig, grid: list[float], per_epoch: int) -> optuna.Study:
    """An in-memory study that tries every rate of ``grid`` once in an order fixed by
    `tune.seed` (or, for the full space, Sobol points scrambled by it), pruning by
    successive halving unless `tune.prune` is false."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says each trial
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if config.prune:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_rung(config, per_epoch), reduction_factor=config.reduction_factor
        )
    sampler: optuna.samplers.BaseSampler
    if config.space == "learning_rate":
        sampler = optuna.samplers.GridSampler({"learning_rate": grid}, seed=config.seed)
    else:
        with warnings.catch_warnings():  # experimental since Optuna 3.0, and said so
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True,
                                                 seed=config.seed)  # fmt: skip
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def three_digits(value: float) -> float:
    """A sampled value rounded to three significant digits, so that it reads well as a param
    (0.00316, not 0.0031622...) and trains as it reads."""
    return float(f"{value:.3g}")


def suggest(
    trial: optuna.Trial, config: TuneConfig, grid: list[float], searched: tuple[str, ...]
) -> dict[str, float]:
    """The trial's hyperparameters: its learning rate (the next point of the grid, or a
    log-uniform draw from `tune.low` to `tune.high`) and, for the full space, each of
    ``searched`` (Keras' argument names) drawn log-uniform from its range; a decay drawn
    as 1 minus it."""
    if config.space == "learning_rate":
        return {"learning_rate": trial.suggest_float("learning_rate", grid[0], grid[-1],
                                                     log=True)}  # fmt: skip
    values = {"learning_rate": three_digits(
        trial.suggest_float("learning_rate", config.low, config.high, log=True))}  # fmt: skip
    for argument in searched:
        key = RANGE_OF[argument]
        values[argument] = value_of(
            argument, three_digits(trial.suggest_float(key, *config.ranges[key], log=True))
        )
    return values


def value_of(argument: str, drawn: float) -> float:
    """The argument's value for a point ``drawn`` from its range: a decay is 1 minus it."""
    return round(1 - drawn, 12) if RANGE_OF[argument].startswith("one_minus_") else drawn


def ends(config: TuneConfig, grid: list[float], searched: tuple[str, ...]) -> list[dict]:
    """The hyperparameters at the ends of the space: every rate of the grid, or both corners
    of the ranges, which the search builds before training anything."""
    if config.space == "learning_rate":
        return [{"learning_rate": rate} for rate in grid]
    return [
        {"learning_rate": rate}
        | {a: value_of(a, config.ranges[RANGE_OF[a]][end]) for a in searched}
        for end, rate in enumerate((config.low, config.high))
    ]


def described(config: TuneConfig, grid: list[float], searched: tuple[str, ...]) -> dict:
    """What the search searches, as its MLflow run's params."""
    space = {"tune.grid": grid} if config.space == "learning_rate" else {
        f"tune.ranges.{RANGE_OF[a]}": list(config.ranges[RANGE_OF[a]]) for a in searched
    } | {"tune.ranges.learning_rate": [config.low, config.high]}  # fmt: skip
    return {"tune.space": config.space, "tune.searched": ", ".join(("learning_rate", *searched)),
            "tune.trials": budget(config, grid)} | space  # fmt: skip


def trial_label(hyperparameters: dict[str, float]) -> str:
    """A trial in a few words: `lr=0.001 beta_1=0.9`."""
    return " ".join(
        f"{'lr' if key == 'learning_rate' else key}={value:g}"
        for key, value in hyperparameters.items()
    )


def not_a_retracing_notice(record: logging.LogRecord) -> bool:
    """False for TensorFlow's warning that "N out of the last M calls to <function ...>
    triggered tf.function retracing": each trial builds a new model, whose train and test
    steps Keras traces anew by design. On small data, where a trial makes few calls (a
    mid-epoch rung on a hundred images), TensorFlow counts those tracings and advises against
    what a search must do."""
    return "triggered tf.function retracing" not in record.getMessage()


def quiet_retracing_notices() -> None:
    """Keep TensorFlow's retracing notices out of the search's log; adding the same filter
    again (a second search in one process) changes nothing."""
    logging.getLogger("tensorflow").addFilter(not_a_retracing_notice)


def judged_value(val_loss: float, val_accuracy: float) -> float:
    """What a trial is judged on: its validation accuracy; a diverged one (NaN loss) gets 0,
    so it ranks last instead of poisoning the comparison."""
    return 0.0 if math.isnan(val_loss) else float(val_accuracy)


def evaluate_mid_epoch(model: keras.Model, data: dict[str, np.ndarray], batch_size: int) -> dict:
    """The model's validation loss and accuracy in the middle of a fit, computed as Keras
    computes them at an epoch's end (its traced test step, nothing traced anew); the
    training metrics the epoch has accumulated so far, which `evaluate` resets, are put
    back as they were, so the epoch's logs are those of a fit never interrupted."""
    accumulated = [variable.numpy() for variable in model.metrics_variables]
    scores = model.evaluate(
        data["x_val"], data["y_val"], batch_size=batch_size, verbose=0, return_dict=True
    )
    for variable, value in zip(model.metrics_variables, accumulated, strict=True):
        variable.assign(value)
    return {"val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"])}


class PruneWeakTrial(keras.callbacks.Callback):
    """Judge the trial at every rung and every epoch's end: report its validation accuracy
    to Optuna (step: batches trained), and raise `optuna.TrialPruned` out of the fit when
    the pruner says it is not among the best at its rung (the idiom of Optuna's own Keras
    callback). ``reports`` holds (batches, val_loss, val_accuracy, judged value) in order;
    ``pruned_at`` the batches trained when it was pruned."""

    def __init__(
        self, trial: optuna.Trial, config: TuneConfig, data: dict[str, np.ndarray],
        batch_size: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.trial = trial
        self.data = data
        self.batch_size = batch_size
        self.per_epoch = batches_per_epoch(len(data["x_train"]), batch_size)
        self.total = config.epochs * self.per_epoch
        judged_at = rungs(config, self.per_epoch) if config.prune else []
        self.mid_epoch_rungs = {r for r in judged_at if r % self.per_epoch}
        self.epoch = 0
        self.reports: list[tuple[int, float, float, float]] = []
        self.pruned_at: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = self.epoch * self.per_epoch + batch + 1
        if step in self.mid_epoch_rungs:
            scores = evaluate_mid_epoch(self.model, self.data, self.batch_size)
            self.judge(step, scores["val_loss"], scores["val_accuracy"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.judge((epoch + 1) * self.per_epoch, logs["val_loss"], logs["val_accuracy"])

    def judge(self, step: int, val_loss: float, val_accuracy: float) -> None:
        value = judged_value(val_loss, val_accuracy)
        self.reports.append((step, float(val_loss), float(val_accuracy), value))
        self.trial.report(value, step)
        # At the last batch the budget is spent: the trial completed, whatever the pruner says.
        if step < self.total and self.trial.should_prune():
            self.pruned_at = step
            raise optuna.TrialPruned(f"pruned after {step} batches")

    @property
    def diverged(self) -> bool:
        """Whether a validation loss it was judged on is NaN or infinite."""
        return any(not math.isfinite(val_loss) for _, val_loss, _, _ in self.reports)

    @property
    def epochs_reached(self) -> float:
        """The epochs the trial trained, a fraction where it was pruned inside one."""
        return round(self.reports[-1][0] / self.per_epoch, 2) if self.reports else 0.0


def stop_reason(pruning: PruneWeakTrial, config: TuneConfig) -> str:
    """Why a trial stopped, in words for the MLflow run and the tuning table."""
    if pruning.diverged:
        return f"diverged: the loss went NaN or infinite by {pruning.epochs_reached:g} epochs"
    if pruning.pruned_at is None:
        return f"completed all {config.epochs} epochs"
    return (
        f"pruned after {pruning.epochs_reached:g} of {config.epochs} epochs "
        f"({pruning.pruned_at} of {pruning.total} batches): not among "
        f"the best 1/{config.reduction_factor} of the trials at that rung (successive halving)"
    )


def best_hyperparameters(trials: list[dict[str, Any]], name: str) -> dict[str, float]:
    """The hyperparameters of the trial with the highest validation accuracy among those that
    completed every epoch (a pruned trial's accuracy after fewer epochs is not comparable)
    and did not diverge; a tie goes to the smaller learning rate. Never test accuracy:
    choosing on the test set would make its numbers optimistic."""
    complete = [t for t in trials if not t["pruned"] and not t.get("diverged")]
    if not complete:
        raise PipelineError(
            f"tune@{name}: every trial diverged or was pruned ("
            + ", ".join(f"{trial_label(t['hyperparameters'])}: {t['stopped']}" for t in trials)
            + "); lower tune.high or set tune.prune: false"
        )
    best = max(complete, key=lambda t: (t["val_accuracy"], -t["learning_rate"]))
    return best["hyperparameters"]


def pruner_name(config: TuneConfig) -> str:
    """The pruning, in words: what the tables and MLflow say of the search."""
    if not config.prune:
        return "none"
    return (
        f"successive halving (first rung after {config.min_epochs:g} epoch(s), "
        f"reduction factor {config.reduction_factor})"
    )
