"""What every analysis shares: its registry, the run's evaluation outputs, and the tidy row format."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..registry import Registry

# An analysis: (RunOutputs, **options) → rows; each row a dict with "metric", "value" and any qualifiers.
ANALYSES: Registry[Callable[..., list[dict]]] = Registry("analysis", inputs=("run",))

# Every row has every qualifier (NaN where it does not apply), so all runs' rows concatenate into one table.
QUALIFIERS = ("temperature", "bin", "class", "epsilon", "attack", "x", "y")
COLUMNS = ("metric", "value", *QUALIFIERS)
REFERENCE_TEMPERATURES = (1.0, 4.0)  # teachers and scratch runs: the temperatures students commonly use


@dataclass
class RunOutputs:
    """One finished run's evaluation-set outputs, computed once and shared by every analysis."""

    config: RunConfig
    model: nn.Module
    data: Any
    device: torch.device
    logits: Tensor  # (N, K), CPU, eval-set order
    labels: Tensor  # (N,)
    features: Tensor  # (N, D) penultimate features
    teacher_logits: Tensor | None  # (N, K) for students distilled from a teacher

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def temperatures(self) -> tuple[float, ...]:
        """T=1 and the run's own KD temperature; runs without one use the students' reference temperatures."""
        own = self.config.temperature
        return tuple(sorted({1.0, own})) if own is not None else REFERENCE_TEMPERATURES


def writes(**metrics: str):
    """Declare the metrics an analysis writes, each with what it measures: `mixkd list metrics` shows them."""

    def mark(analysis):
        analysis.metrics = metrics
        return analysis

    return mark


def row(metric: str, value: float, **qualifiers) -> dict:
    return {"metric": metric, "value": float(value), **qualifiers}


def tidy(rows: list[dict]) -> list[dict]:
    """Fill absent qualifiers with NaN, in the fixed column order; an unknown key is a bug in an analysis."""
    for r in rows:
        if unknown := set(r) - set(COLUMNS):
            raise ValueError(f"analysis row {r['metric']!r}: unknown columns {sorted(unknown)}; known: {COLUMNS}")
    return [{c: r.get(c, math.nan) for c in COLUMNS} for r in rows]
