"""The model's outputs alone: accuracy and calibration (every METRICS entry, reliability bins) and the
'smoothness' MIX-KD ties to mixup — entropy at the temperatures KD uses, confidence, logit scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..metrics import METRICS, reliability_bins, softmax_entropy
from .base import ANALYSES, RunOutputs, row, writes

ENTROPY_BINS = 20  # histogram of the T=1 entropy over [0, log K]


@ANALYSES.register()
@writes(**{name: (METRICS.get(name).__doc__ or "").strip().splitlines()[0] for name in METRICS})
def scores(run: RunOutputs) -> list[dict]:
    """Every registered metric (top-1/5, NLL, Brier, ECE, entropy) of the final model."""
    return [row(name, METRICS.get(name)(run.logits, run.labels)) for name in METRICS]


@ANALYSES.register()
@writes(reliability_count="samples in each of 15 confidence bins (bin; x: its centre)",
        reliability_confidence="mean confidence in each confidence bin",
        reliability_accuracy="accuracy in each confidence bin")
def reliability(run: RunOutputs) -> list[dict]:
    """The reliability diagram behind the ECE: per non-empty bin its count, mean confidence and accuracy."""
    count, conf, acc = reliability_bins(run.logits, run.labels)
    width = 1 / len(count)
    return [row(f"reliability_{name}", value[b], bin=b, x=(b + 0.5) * width)
            for b in torch.nonzero(count).flatten().tolist()
            for name, value in (("count", count), ("confidence", conf), ("accuracy", acc))]


@ANALYSES.register()
@writes(entropy_mean="mean softmax entropy (nats) at each temperature",
        entropy_median="median softmax entropy at each temperature",
        max_prob="mean largest softmax probability at each temperature",
        logit_norm="mean L2 norm of the logits", logit_std="mean standard deviation of the logits over classes",
        class_entropy="mean T=1 entropy of the samples of each true class (class)",
        entropy_hist="fraction of samples in each of 20 T=1 entropy bins over [0, log K] (bin; x: its centre)")
def smoothness(run: RunOutputs) -> list[dict]:
    """Entropy (mean, median), mean max-probability at each of `run.temperatures`; logit scale; the T=1
    entropy per true class and as a histogram (bins over [0, log K], `x` the bin centre, value the fraction)."""
    rows = []
    for t in run.temperatures:
        h = softmax_entropy(run.logits, t)
        p_max = F.softmax(run.logits.double() / t, dim=1).max(dim=1).values
        rows += [row("entropy_mean", h.mean(), temperature=t), row("entropy_median", h.median(), temperature=t),
                 row("max_prob", p_max.mean(), temperature=t)]
    z = run.logits.double()
    rows += [row("logit_norm", z.norm(dim=1).mean()), row("logit_std", z.std(dim=1).mean())]
    h = softmax_entropy(run.logits)
    rows += [row("class_entropy", h[run.labels == c].mean(), temperature=1.0, **{"class": c})
             for c in run.labels.unique().tolist()]
    top = math.log(run.num_classes)
    hist = torch.histc(h.clamp(0, top), ENTROPY_BINS, 0, top) / len(h)  # clamp: rounding past log K
    rows += [row("entropy_hist", hist[b], temperature=1.0, bin=b, x=(b + 0.5) * top / ENTROPY_BINS)
             for b in range(ENTROPY_BINS)]
    return rows
