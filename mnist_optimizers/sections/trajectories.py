"""The `trajectories` section of params.yaml: its settings and their validation, read by
stages/trajectories.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import check_keys, positive_int
from mnist_optimizers.surfaces import FUNCTIONS


@dataclass(frozen=True)
class TrajectoriesConfig:
    functions: tuple[str, ...]
    optimizers: tuple[str, ...]
    steps: int
    learning_rates: dict[str, dict[str, float]]  # function -> optimizer -> rate


def validate_trajectories(section: Any, optimizers: dict[str, Any]) -> TrajectoriesConfig:
    """Check the `trajectories` section: known functions, optimizers that are entries of
    `optimizers`, a positive step count, and a positive learning rate for every pair."""
    keys = ("functions", "optimizers", "steps", "learning_rates")
    check_keys(section, keys, "trajectories", keys)
    functions, names = section["functions"], section["optimizers"]
    if not isinstance(functions, list) or not functions or set(functions) - set(FUNCTIONS):
        raise ParamsError(
            f"trajectories.functions: expected a non-empty list of {', '.join(FUNCTIONS)}, "
            f"got {shown(functions)}"
        )
    if not isinstance(names, list) or not names or set(names) - set(optimizers):
        raise ParamsError(
            "trajectories.optimizers: expected a non-empty list of entries of `optimizers`, "
            f"got {shown(names)}"
        )
    rates = section["learning_rates"]
    for function in functions:
        row = rates.get(function) if isinstance(rates, dict) else None
        for name in names:
            rate = row.get(name) if isinstance(row, dict) else None
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
                raise ParamsError(
                    f"trajectories.learning_rates.{function}.{name}: expected a positive "
                    f"number, got {shown(rate)}"
                )
    return TrajectoriesConfig(
        functions=tuple(functions),
        optimizers=tuple(names),
        steps=positive_int(section["steps"], "trajectories.steps"),
        learning_rates={f: {n: float(rates[f][n]) for n in names} for f in functions},
    )
