"""The `workloads` section: the problems the optimizers are compared on, each a data set, a
model and the validation accuracies its time to target is measured at; and `compare_workloads`,
the ones a run trains (as `compare` names the optimizers).

    workloads:
      mnist_mlp:
        data: mnist                  # an entry of `datasets`
        model: {conv_blocks: [], dense_units: [1000, 500, 100], num_classes: 10}
        targets: [0.97, 0.98]

A model without conv blocks is a multilayer perceptron, and without dense units either,
logistic regression (mnist_optimizers/model.py); `kernel_size` and `pool_size` size the conv
blocks and may be left out where there are none.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.model import ModelConfig, validate_model
from mnist_optimizers.params import check_keys, selection
from mnist_optimizers.stats import validate_targets

# What conv blocks need and an MLP does not: the values an MLP's model section may leave out.
CONV_ONLY = {"kernel_size": 3, "pool_size": 2}


@dataclass(frozen=True)
class Workload:
    name: str
    data: str  # an entry of `datasets`
    model: ModelConfig
    targets: tuple[float, ...]  # validation accuracies, ascending


def check_workload_name(name: Any) -> str:
    """A workload's name: 1 to 64 lower-case letters, digits or '_' (it names stages, files and
    MLflow runs: `train@mnist_mlp-adam-42`; '-' joins it to the optimizer and seed)."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,64}", name):
        raise ParamsError(
            f"workloads: {shown(name)} is not a valid name: use 1 to 64 lower-case letters, "
            "digits or '_' ('-' joins it to the optimizer and seed in run and file names)"
        )
    return name


def validate_workload(name: str, entry: Any, datasets: Collection[str]) -> Workload:
    """Check one entry of `workloads`."""
    where = f"workloads.{name}"
    check_keys(entry, ("data", "model", "targets"), where, ("data", "model", "targets"))
    if entry["data"] not in datasets:
        raise ParamsError(
            f"{where}.data: {shown(entry['data'])} is not an entry of `datasets`; entries: "
            f"{', '.join(datasets)}"
        )
    model = entry["model"]
    if isinstance(model, Mapping) and model.get("conv_blocks") == []:
        model = CONV_ONLY | dict(model)
    try:
        config = validate_model(model)
    except ParamsError as error:  # name the workload: model.x -> workloads.<name>.model.x
        raise ParamsError(str(error).replace("model", f"{where}.model", 1)) from None
    targets = validate_targets(entry["targets"], f"{where}.targets")
    return Workload(name, entry["data"], config, tuple(sorted(targets)))


def validate_workloads(section: Any, compared: Any, datasets: Collection[str]) -> list[Workload]:
    """Check `workloads` and `compare_workloads` (a non-empty list of distinct entries of it);
    return the compared workloads, in its order."""
    if not isinstance(section, Mapping) or not section:
        raise ParamsError("workloads: expected at least one entry, e.g. `mnist_cnn: {...}`")
    for name in section:
        check_workload_name(name)
    compared = selection(compared, section, "compare_workloads", "workloads", "workload")
    return [validate_workload(name, section[name], datasets) for name in compared]
