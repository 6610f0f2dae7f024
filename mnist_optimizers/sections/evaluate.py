"""The `evaluate` section of params.yaml: its settings and their validation, read by
stages/evaluate.py and checked with every other section by stages/check_params.py. What is a
workload's own (its validation targets, a published result to show beside ours) is in its
entry of `workloads` (mnist_optimizers/workloads.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_optimizers import stats
from mnist_optimizers.params import check_keys, positive_int


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    confidence: float = 0.95  # of the intervals over seeds and of the significance tests


def validate_evaluate(section: Any) -> EvaluateConfig:
    """Check the `evaluate` section: prediction batch size and the confidence level."""
    check_keys(section, ("batch_size", "confidence"), "evaluate", ("batch_size",))
    return EvaluateConfig(
        batch_size=positive_int(section["batch_size"], "evaluate.batch_size"),
        confidence=stats.validate_confidence(section.get("confidence", 0.95)),
    )
