"""The `evaluate` section of params.yaml: its settings and their validation, read by
stages/evaluate.py and checked with every other section by stages/check_params.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_optimizers import stats
from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import check_keys, finite_number, positive_int


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    reference_val_accuracy: dict[str, float]  # optimizer name -> percent
    targets: tuple[float, ...] = stats.DEFAULT_TARGETS  # validation accuracies to time
    confidence: float = 0.95  # of the intervals over seeds and of the significance tests


def validate_evaluate(section: Any) -> EvaluateConfig:
    """Check the `evaluate` section: prediction batch size, the reference accuracies, the
    validation targets to time and the confidence level."""
    keys = ("batch_size", "reference_val_accuracy", "targets", "confidence")
    check_keys(section, keys, "evaluate", ("batch_size",))
    reference = section.get("reference_val_accuracy") or {}
    if not isinstance(reference, dict):
        raise ParamsError(
            f"evaluate.reference_val_accuracy: expected a mapping of optimizer -> percent, "
            f"got {shown(reference)}"
        )
    return EvaluateConfig(
        batch_size=positive_int(section["batch_size"], "evaluate.batch_size"),
        reference_val_accuracy={
            name: percent(v, f"evaluate.reference_val_accuracy.{name}")
            for name, v in reference.items()
        },
        targets=stats.validate_targets(section.get("targets", list(stats.DEFAULT_TARGETS))),
        confidence=stats.validate_confidence(section.get("confidence", 0.95)),
    )


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
