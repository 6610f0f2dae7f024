"""Every figure of the pipeline, drawn with matplotlib's headless backend and saved as PNG
atomically: the histories, confusion matrices, the tuning grid, the time to target, the
gradient-descent variants and the 2-D trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mnist_optimizers.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mnist_optimizers.surfaces import TestFunction

HISTORY_LABELS = {"val_accuracy": "Validation accuracy", "val_loss": "Validation loss"}


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(fig: Figure, path: Path) -> None:
    """Lay out ``fig``, save it as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)


def plot_history(history: pd.DataFrame, column: str, path: Path, setting: str) -> None:
    """Per optimizer, the mean over seeds of ``column`` against epoch with a band from the
    lowest to the highest seed, saved as PNG; the title says which ``setting`` (the learning
    rates) it shows."""
    from matplotlib.ticker import MaxNLocator

    label = HISTORY_LABELS.get(column, column)
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    for name, group in history.groupby("optimizer", sort=False):
        (line,) = ax.plot(group["epoch"], group[column], marker="o", label=name)
        if f"{column}_min" in group:
            ax.fill_between(
                group["epoch"],
                group[f"{column}_min"],
                group[f"{column}_max"],
                color=line.get_color(),
                alpha=0.2,
            )
    ax.set(xlabel="epoch", ylabel=label, title=f"{label} per epoch, {setting}")
    ax.text(0.99, 0.01, "band: lowest to highest seed", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=7, color="0.4")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, name: str, path: Path) -> None:
    """A confusion-matrix heat map with counts, saved as PNG."""
    fig, ax = pyplot().subplots(figsize=(5, 4.5), dpi=120)
    ax.imshow(confusion, cmap="Blues")
    for (row, col), count in np.ndenumerate(confusion):
        color = "white" if count > confusion.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=6, color=color)
    ticks = range(confusion.shape[0])
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xlabel="predicted",
        ylabel="actual",
        title=f"{name}: confusion matrix",
    )
    save_figure(fig, path)


def plot_tuning(tuning: pd.DataFrame, path: Path) -> None:
    """Validation accuracy against learning rate (log scale), a line per optimizer through
    the trials that ran every epoch (dots alone for a full-space search, whose other
    hyperparameters vary from trial to trial), the chosen trial circled; a trial the pruner
    stopped early is an x at its accuracy when stopped (after fewer epochs)."""
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    full = (tuning["space"] == "full").any()
    for name, group in tuning.groupby("optimizer", sort=False):
        complete = group[~group["pruned"].astype(bool)]
        pruned = group[group["pruned"].astype(bool)]
        (line,) = ax.plot(
            complete["learning_rate"], complete["val_accuracy"], marker="o", label=name,
            linestyle="none" if full else "-",
        )  # fmt: skip
        if not pruned.empty:
            ax.scatter(
                pruned["learning_rate"], pruned["val_accuracy"], marker="x", color=line.get_color()
            )
        chosen = group[group["chosen"]]
        ax.scatter(
            chosen["learning_rate"],
            chosen["val_accuracy"],
            s=150,
            facecolors="none",
            edgecolors=line.get_color(),
        )
    if tuning["pruned"].astype(bool).any():
        ax.scatter([], [], marker="x", color="grey", label="stopped early (pruned)")
    ax.set_xscale("log")
    ax.set(
        xlabel="learning rate",
        ylabel="validation accuracy",
        title=("Full-space search" if full else "Learning-rate search")
        + " (circled: chosen on validation)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_tunability(table: pd.DataFrame, path: Path) -> None:
    """The expected best validation accuracy after k trials of each optimizer's search
    (tunability.tunability_table), a line per optimizer: the higher and the sooner flat, the
    easier to tune."""
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    for name, group in table.groupby("optimizer", sort=False):
        ax.plot(group["trials"], group["expected_best_val_accuracy"], marker="o", label=name)
    ax.set(xlabel="trials of the search (in a random order)",
           ylabel="expected best validation accuracy",
           title="How easy to tune: the best after k trials")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_time_to_target(runs: pd.DataFrame, target: float, path: Path) -> None:
    """Median seconds over seeds to reach ``target`` per optimizer and setting; a hatched
    empty bar says 'never'."""
    column = f"seconds_to_{100 * target:g}"
    table = runs.groupby(["optimizer", "setting"], sort=False)[column].median().unstack()
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    width = 0.8 / len(table.columns)
    for i, setting in enumerate(table.columns):
        positions = [x + i * width for x in range(len(table))]
        values = table[setting]
        ax.bar(positions, values.fillna(0), width, label=f"{setting} learning rate")
        for x, value in zip(positions, values, strict=True):
            if pd.isna(value):
                ax.text(x, 0, "never", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks([x + width * (len(table.columns) - 1) / 2 for x in range(len(table))])
    ax.set_xticklabels(table.index, rotation=30, ha="right")
    ax.set(ylabel="seconds (median over seeds)", title=f"Time to {100 * target:g}% validation")
    ax.legend()
    save_figure(fig, path)


def plot_gd_variants(table: pd.DataFrame, path: Path) -> None:
    """Validation accuracy against updates and against seconds, a line per variant."""
    fig, (by_updates, by_seconds) = pyplot().subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for variant, group in table.groupby("variant", sort=False):
        by_updates.plot(group["updates"], group["val_accuracy"], marker="o", label=variant)
        by_seconds.plot(group["seconds"], group["val_accuracy"], marker="o", label=variant)
    by_updates.set(xscale="log", xlabel="updates (log)", ylabel="validation accuracy")
    by_seconds.set(xlabel="seconds", ylabel="validation accuracy")
    by_updates.set_title("Gradient-descent variants: accuracy against updates")
    by_seconds.set_title("... and against seconds")
    for ax in (by_updates, by_seconds):
        ax.grid(alpha=0.3)
    by_updates.legend()
    save_figure(fig, path)


def plot_trajectories(
    name: str, function: TestFunction, paths: dict[str, np.ndarray], path: Path
) -> None:
    """Contour plot of ``function`` with every optimizer's path (left) and the loss per
    step (right)."""
    x_min, x_max, y_min, y_max = function.window
    xs, ys = np.meshgrid(np.linspace(x_min, x_max, 300), np.linspace(y_min, y_max, 300))
    zs = np.vectorize(function.f)(xs, ys)
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4.5), dpi=110)
    shifted = zs - zs.min() + 1e-3  # log levels need positive values (the saddle has none)
    left.contour(
        xs,
        ys,
        shifted,
        levels=np.geomspace(shifted.min(), shifted.max(), 30),
        cmap="Greys",
        linewidths=0.6,
    )
    for label, points in paths.items():
        inside = points[np.all(np.isfinite(points), axis=1)]
        (line,) = left.plot(inside[:, 0], inside[:, 1], marker=".", markersize=3, label=label)
        right.plot([function.f(x, y) for x, y in inside], color=line.get_color(), label=label)
    left.plot(*function.start, "ko")
    if function.minimum:
        left.plot(*function.minimum, "k*", markersize=12)
    left.set(
        xlim=(x_min, x_max), ylim=(y_min, y_max), title=f"{name}: paths", xlabel="x", ylabel="y"
    )
    right.set(title=f"{name}: loss per step", xlabel="step", ylabel="f(x, y)")
    if function.minimum:
        right.set_yscale("symlog", linthresh=1e-4)
    left.legend(fontsize="small")
    save_figure(fig, path)


def plot_profiles(by_setting: dict[str, pd.DataFrame], path: Path, unit: str = "steps") -> None:
    """AlgoPerf's performance profiles, a panel per setting: rho(tau), the fraction of
    workloads an optimizer reached the target within tau times the fastest (``by_setting``:
    profiles.profile's table of each setting)."""
    panels = len(by_setting)
    fig, axes = pyplot().subplots(1, panels, figsize=(4.5 * panels, 3.8), dpi=120, squeeze=False)
    for ax, (setting, table) in zip(axes[0], by_setting.items(), strict=True):
        # Profiles often coincide (every optimizer reaching every target at the same epoch):
        # a line style each keeps them apart.
        for i, optimizer in enumerate(table.columns):
            ax.step(table.index, table[optimizer], where="post", label=optimizer, linewidth=2,
                    linestyle=("-", "--", ":", "-.")[i % 4], alpha=0.8)  # fmt: skip
        ax.set(xlabel=f"tau (ratio to the fastest, {unit})", ylabel="fraction of workloads",
               ylim=(-0.03, 1.03), title=f"Performance profiles ({setting} rates)")  # fmt: skip
        ax.legend(fontsize=8)
    save_figure(fig, path)
