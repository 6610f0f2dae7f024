"""The `preprocess` section of params.yaml: its settings and their validation, read by
stages/preprocess.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import check_keys, finite_number, positive_int


@dataclass(frozen=True)
class PreprocessConfig:
    val_fraction: float
    subset: int | None


def validate_preprocess(section: Any) -> PreprocessConfig:
    """Check the `preprocess` section: 0 < val_fraction < 1, subset null or a positive int."""
    check_keys(section, ("val_fraction", "subset"), "preprocess", ("val_fraction",))
    val_fraction = finite_number(section["val_fraction"], "preprocess.val_fraction")
    if not 0 < val_fraction < 1:
        raise ParamsError(
            f"preprocess.val_fraction: expected a number strictly between 0 and 1, "
            f"got {shown(section['val_fraction'])}"
        )
    subset = section.get("subset")
    if subset is not None:
        subset = positive_int(subset, "preprocess.subset")
    return PreprocessConfig(val_fraction, subset)
