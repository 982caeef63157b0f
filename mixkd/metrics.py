"""Metrics on a run's evaluation logits, one registered function each: (logits, labels) → float.

Adding a metric is one decorated function; every run's summary and the tables pick it up. The helpers
below (entropy at a temperature, reliability bins) are shared with the per-run analyses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry

METRICS: Registry = Registry("metric", inputs=("logits", "labels"))
ECE_BINS = 15  # Guo et al. 2017: equal-width confidence bins


def _topk(logits: Tensor, labels: Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).double().mean().item()  # exact count / N


def softmax_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample entropy (nats) of softmax(z / T): 0 for a one-hot output, log K for a uniform one."""
    log_p = F.log_softmax(logits.double() / temperature, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def reliability_bins(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin (lo, hi]: sample count, mean confidence, accuracy (NaN when empty)."""
    confidence, predicted = F.softmax(logits.double(), dim=1).max(dim=1)
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf = torch.bincount(index, weights=confidence, minlength=bins) / count
    acc = torch.bincount(index, weights=(predicted == labels).double(), minlength=bins) / count
    return count, conf, acc


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
    return softmax_entropy(logits).mean().item()


@METRICS.register()
def brier(logits: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: mean squared distance of the probabilities to the one-hot label (0..2)."""
    p = F.softmax(logits.double(), dim=1)
    return (p - F.one_hot(labels, p.shape[1]).double()).pow(2).sum(dim=1).mean().item()


@METRICS.register()
def ece(logits: Tensor, labels: Tensor) -> float:
    """Expected calibration error over 15 equal-width confidence bins: Σ (n_b / N)·|accuracy_b − confidence_b|."""
    count, conf, acc = reliability_bins(logits, labels)
    gap = torch.nan_to_num((acc - conf).abs())  # empty bins weigh nothing
    return (count * gap).sum().item() / count.sum().item()


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
