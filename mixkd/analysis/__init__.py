"""Per-run analyses on the evaluation set, as tidy rows: (metric, value, plus qualifiers).

Run once per finished run — teachers included — while its model (and teacher) are in memory, and stored
beside it; the study's `metrics.parquet` is then the concatenation, so reports never reload a model.
Adding an analysis is one function registered in ANALYSES: it receives the shared `RunOutputs` (one
forward pass over the evaluation set) and returns rows. All rows describe the final (last-epoch) model.
Across-seed statistics over those rows are in `mixkd.report.stats`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..config import RunConfig
from .base import ANALYSES, COLUMNS, QUALIFIERS, RunOutputs, row, tidy


@torch.no_grad()
def collect(config: RunConfig, model: nn.Module, teacher: nn.Module | None, data,
            device: torch.device) -> RunOutputs:
    """One pass over the evaluation set: the model's logits and penultimate features, the teacher's logits."""
    model.eval()
    parts: dict[str, list] = {"logits": [], "features": [], "labels": [], "teacher": []}
    for x, y in data.eval_loader(config.eval_batch_size, device):
        logits, feats = model(x, return_features=True)
        parts["logits"].append(logits.float().cpu())
        parts["features"].append(feats.pooled.float().cpu())
        parts["labels"].append(y.cpu())
        if teacher is not None:
            parts["teacher"].append(teacher(x).float().cpu())
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return RunOutputs(config, model, data, device, cat["logits"], cat["labels"], cat["features"], cat["teacher"])


@contextmanager
def single_threaded(device: torch.device):
    """On the CPU, run torch on one thread. The analyses' ops are small (≤ 500 images, tiny models in the
    quickstart), and on shared cores a second OpenMP thread mostly waits: measured on the 2-core quickstart
    machine while other processes ran, 3.5 s per run with 2 threads against 0.7 s with one."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def analyse_run(config: RunConfig, model: nn.Module, teacher: nn.Module | None, data, device: torch.device,
                options: dict[str, dict] | None = None) -> list[dict]:
    """Every registered analysis of one run; `options` maps an analysis name to its keyword arguments."""
    options = options or {}
    with single_threaded(torch.device(device)):
        run = collect(config, model, teacher, data, device)
        return tidy([r for name in ANALYSES for r in ANALYSES.get(name)(run, **options.get(name, {}))])


def metrics_written() -> dict[str, str]:
    """Every metric a run's analyses write → "analysis: what it measures"."""
    return {metric: f"{name}: {what}" for name in ANALYSES for metric, what in ANALYSES.get(name).metrics.items()}


from . import distillation, features, outputs, robustness  # noqa: E402,F401  (registration)

__all__ = ["ANALYSES", "COLUMNS", "QUALIFIERS", "RunOutputs", "analyse_run", "collect", "metrics_written", "row"]
