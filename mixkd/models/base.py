"""The contract every mixkd model follows.

A model is stem → stages → pool → head. Keeping that shape explicit (rather than one opaque
`forward`) is what lets analyses read the penultimate features and each stage's output, and lets
manifold mixup mix the hidden state in front of any stage, for every architecture alike.
Subclasses keep their reference implementation's attribute names so foreign checkpoints load
with strict key matching; they only say which modules play which role.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


@dataclass
class Features:
    stages: list[Tensor]  # output of each stage, in order
    pooled: Tensor  # (B, D) penultimate features, the classifier's input
    # Asked for by distillation methods (`taps`), else None:
    stem: Tensor | None = None  # the stem's output (FSP's first map)
    maps: list[Tensor] | None = None  # each stage's map as the reference zoo taps it (VGG: before its max-pool)
    preact: list[Tensor] | None = None  # each stage's map before its last nonlinearity (OFD, AB, ReviewKD)


TAPS = ("stem", "maps", "preact")  # the features beyond stages and pooled a forward can be asked for


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

    def stem_map(self, stem: Tensor) -> Tensor:
        """The map the reference zoo (RepDistiller, mdistiller) indexes first (F0): the stem's output, unless an
        architecture counts differently."""
        return stem

    def maps(self, stages: list[Tensor]) -> list[Tensor]:
        """The stage maps the reference zoo distils from (F1, F2, ... in RepDistiller's feature list): the stage
        outputs, unless an architecture taps elsewhere."""
        return stages

    def preacts(self, stages: list[Tensor]) -> list[Tensor]:
        """Each stage's map before its last nonlinearity; architectures that have them override this (and
        `taps_preact`), so a method that needs them can be refused for the others when a study is read."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-activation features")

    taps_preact = False

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm whose output each pre-activation is (OFD reads its margins off them)."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-activation features")

    @contextmanager
    def tapping(self, taps: frozenset[str]):
        """The forward inside records what `taps` asks for (architectures whose taps live inside their stages
        switch recording on here)."""
        yield

    def forward(self, x: Tensor, return_features: bool = False, mix_at: int | None = None,
                mix_fn: Callable[[Tensor], Tensor] | None = None, taps: frozenset[str] = frozenset()):
        """`mix_fn` is applied to the input of stage `mix_at` (== num_stages: to the last output); `taps` adds
        the features of TAPS it names to the returned Features."""
        if mix_at is not None and not 0 <= mix_at <= self.num_stages:
            raise ValueError(f"manifold mixup at stage {mix_at}: {type(self).__name__} mixes at stages "
                             f"0..{self.num_stages} (the input of each stage, or the last output)")
        with self.tapping(taps):
            h = stem = self.stem(x)
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
            if not return_features:
                return logits
            return logits, Features(outs, pooled, self.stem_map(stem) if "stem" in taps else None,
                                    self.maps(outs) if "maps" in taps else None,
                                    self.preacts(outs) if "preact" in taps else None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
