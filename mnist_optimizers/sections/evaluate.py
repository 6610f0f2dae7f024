"""The `evaluate` section of params.yaml: its settings and their validation, read by
stages/evaluate.py and checked with every other section by stages/check_params.py. What is a
workload's own (its validation targets, a published result to show beside ours) is in its
entry of `workloads` (mnist_optimizers/workloads.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_optimizers import stats
from mnist_optimizers.errors import ParamsError, shown
from mnist_optimizers.params import check_keys, is_number, positive_int


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    confidence: float = 0.95  # of the intervals over seeds and of the significance tests
    margin: float = 0.3  # points of test accuracy: a pair's difference within it is equivalent


def validate_evaluate(section: Any) -> EvaluateConfig:
    """Check the `evaluate` section: prediction batch size, the confidence level and the
    equivalence margin."""
    check_keys(section, ("batch_size", "confidence", "margin"), "evaluate", ("batch_size",))
    return EvaluateConfig(
        batch_size=positive_int(section["batch_size"], "evaluate.batch_size"),
        confidence=stats.validate_confidence(section.get("confidence", 0.95)),
        margin=validate_margin(section.get("margin", 0.3)),
    )


def validate_margin(value: Any, key: str = "evaluate.margin") -> float:
    """Check an equivalence margin: points of test accuracy, a number in (0, 100)."""
    if not is_number(value) or not 0 < value < 100:
        raise ParamsError(
            f"{key}: expected points of test accuracy, a number in (0, 100) such as 0.3, "
            f"got {shown(value)}"
        )
    return float(value)
