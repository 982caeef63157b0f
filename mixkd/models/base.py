"""The contract every mixkd model follows.

A model is stem → stages → pool → head. Keeping that shape explicit (rather than one opaque
`forward`) is what lets analyses read the penultimate features and each stage's output, and lets
manifold mixup mix the hidden state in front of any stage, for every architecture alike.
Subclasses keep their reference implementation's attribute names so foreign checkpoints load
with strict key matching; they only say which modules play which role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


@dataclass
class Features:
    stages: list[Tensor]  # output of each stage, in order
    pooled: Tensor  # (B, D) penultimate features, the classifier's input


class StagedNet(nn.Module):
    """Base class: forward(x) → logits; forward(x, return_features=True) → (logits, Features)."""

    def stem(self, x: Tensor) -> Tensor:
        return x

    def stages(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def pool(self, h: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)

    def head(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        return len(self.stages())

    def forward(self, x: Tensor, return_features: bool = False, mix_at: int | None = None,
                mix_fn: Callable[[Tensor], Tensor] | None = None):
        """`mix_fn` is applied to the input of stage `mix_at` (== num_stages: to the last output)."""
        if mix_at is not None and not 0 <= mix_at <= self.num_stages:
            raise ValueError(f"manifold mixup at stage {mix_at}: {type(self).__name__} mixes at stages "
                             f"0..{self.num_stages} (the input of each stage, or the last output)")
        h = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages()):
            if i == mix_at:
                h = mix_fn(h)
            h = stage(h)
            outs.append(h)
        if mix_at is not None and mix_at == len(outs):
            h = mix_fn(h)
        pooled = self.pool(h)
        logits = self.head(pooled)
        return (logits, Features(outs, pooled)) if return_features else logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
