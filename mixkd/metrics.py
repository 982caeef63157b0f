"""Metrics on a run's evaluation logits, one registered function each: (logits, labels) → float.

Adding a metric is one decorated function; every run's summary and the tables pick it up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry

METRICS: Registry = Registry("metric")


def _topk(logits: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


@METRICS.register()
def top1(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (fraction)."""
    return _topk(logits, labels, 1)


@METRICS.register()
def top5(logits: Tensor, labels: Tensor) -> float:
    """Top-5 accuracy (fraction; top-K when there are fewer than 5 classes)."""
    return _topk(logits, labels, 5)


@METRICS.register()
def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class (the test cross-entropy)."""
    return F.cross_entropy(logits.float(), labels).item()


@METRICS.register()
def entropy(logits: Tensor, labels: Tensor) -> float:
    """Mean softmax entropy (nats) at T=1: MIX-KD's 'smoothness' of a model's outputs."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean().item()


def compute_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    return {name: METRICS.get(name)(logits, labels) for name in METRICS}


@torch.no_grad()
def predict(model: torch.nn.Module, loader) -> tuple[Tensor, Tensor]:
    """All evaluation logits and labels, on the CPU, in loader order."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)
