"""Per-run analyses on the evaluation set, as tidy rows: (metric, value, plus qualifiers).

Run once per finished run, while its model (and teacher) are in memory, and stored beside it; the
study's `metrics.parquet` is then the concatenation, so reports never reload a model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..metrics import METRICS, predict


def analyse_run(config: dict, model: nn.Module, teacher: nn.Module | None, data, device: torch.device) -> list[dict]:
    logits, labels = predict(model, data.eval_loader(config["recipe"]["eval_batch_size"] if config["recipe"] else 500,
                                                     device))
    return [{"metric": name, "value": METRICS.get(name)(logits, labels)} for name in METRICS]
