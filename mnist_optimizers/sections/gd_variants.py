"""The `gd_variants` section of params.yaml: its settings and their validation, read by
stages/gd_variants.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import positive_int, seed


@dataclass(frozen=True)
class GDConfig:
    workload: str  # an entry of `workloads`: its data and model
    optimizer: str  # an entry of `optimizers`
    images: int
    epochs: int
    mini_batch: int
    seed: int


def validate_gd(
    section: Any, optimizers: Mapping[str, Any], workloads: Collection[str]
) -> GDConfig:
    """Check the `gd_variants` section."""
    if not isinstance(section, dict):
        raise ParamsError(f"gd_variants: expected a mapping, got {shown(section)}")
    keys = {"workload", "optimizer", "images", "epochs", "mini_batch", "seed"}
    if set(section) != keys:
        raise ParamsError(f"gd_variants: expected the keys {', '.join(sorted(keys))}")
    if section["optimizer"] not in optimizers:
        raise ParamsError(
            f"gd_variants.optimizer: {shown(section['optimizer'])} is not an entry of `optimizers`"
        )
    if section["workload"] not in workloads:
        raise ParamsError(
            f"gd_variants.workload: {shown(section['workload'])} is not an entry of `workloads`"
        )
    return GDConfig(
        workload=section["workload"],
        optimizer=section["optimizer"],
        images=positive_int(section["images"], "gd_variants.images"),
        epochs=positive_int(section["epochs"], "gd_variants.epochs"),
        mini_batch=positive_int(section["mini_batch"], "gd_variants.mini_batch"),
        seed=seed(section["seed"], "gd_variants.seed"),
    )
