"""The `workloads` section: the problems the optimizers are compared on, each a data set, a
model and the validation accuracies its time to target is measured at; and `compare_workloads`,
the ones a run trains (as `compare` names the optimizers).

    workloads:
      mnist_mlp:
        data: mnist                  # an entry of `datasets`
        model: {conv_blocks: [], dense_units: [1000, 500, 100], num_classes: 10}
        targets: [0.97, 0.98]         # the first is the performance profile's
        reference_val_accuracy: {}    # optional: a published result per optimizer (%)

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
from mnist_optimizers.architecture import ModelConfig, validate_model
from mnist_optimizers.params import check_keys, finite_number, selection
from mnist_optimizers.stats import validate_targets

# What conv blocks need and an MLP does not: the values an MLP's model section may leave out.
CONV_ONLY = {"kernel_size": 3, "pool_size": 2}


@dataclass(frozen=True)
class Workload:
    name: str
    data: str  # an entry of `datasets`
    model: ModelConfig
    targets: tuple[float, ...]  # validation accuracies to time; the first is the profile's
    reference_val_accuracy: dict[str, float]  # optimizer name -> percent, shown beside ours

    @property
    def target(self) -> float:
        """The validation accuracy the performance profile times (AlgoPerf's target)."""
        return self.targets[0]


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
    keys = ("data", "model", "targets", "reference_val_accuracy")
    check_keys(entry, keys, where, ("data", "model", "targets"))
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
    reference = entry.get("reference_val_accuracy") or {}
    if not isinstance(reference, Mapping):
        raise ParamsError(f"{where}.reference_val_accuracy: expected a mapping of optimizer -> "
                          f"percent, got {shown(reference)}")  # fmt: skip
    reference = {
        str(k): percent(v, f"{where}.reference_val_accuracy.{k}") for k, v in reference.items()
    }
    return Workload(name, entry["data"], config, targets, reference)


def workload(params: Mapping[str, Any], name: str) -> Workload:
    """The checked entry ``name`` of `workloads` (its data set an entry of `datasets`)."""
    section = params.get("workloads")
    if not isinstance(section, Mapping) or name not in section:
        raise ParamsError(f"workloads: no entry {shown(name)}")
    datasets = params.get("datasets")
    return validate_workload(check_workload_name(name), section[name],
                             datasets if isinstance(datasets, Mapping) else {})  # fmt: skip


def compared(params: Mapping[str, Any]) -> list[Workload]:
    """The workloads `compare_workloads` names, checked, in its order."""
    datasets = params.get("datasets")
    return validate_workloads(params.get("workloads"), params.get("compare_workloads"),
                              datasets if isinstance(datasets, Mapping) else {})  # fmt: skip


def validate_workloads(section: Any, compared: Any, datasets: Collection[str]) -> list[Workload]:
    """Check `workloads` and `compare_workloads` (a non-empty list of distinct entries of it);
    return the compared workloads, in its order."""
    if not isinstance(section, Mapping) or not section:
        raise ParamsError("workloads: expected at least one entry, e.g. `mnist_cnn: {...}`")
    for name in section:
        check_workload_name(name)
    compared = selection(compared, section, "compare_workloads", "workloads", "workload")
    return [validate_workload(name, section[name], datasets) for name in compared]


def percent(value: Any, key: str) -> float:
    """An accuracy in percent, above 1 and at most 100: a fraction (0.9897 for 98.97 %)
    would print as a 98-point gap, so it is refused."""
    number = finite_number(value, key)
    if not 1 < number <= 100:
        raise ParamsError(
            f"{key}: expected a validation accuracy in percent (above 1, at most 100, e.g. "
            f"98.97), got {shown(value)}"
        )
    return number
