"""Mixing variants, chosen by name: `Mixer(name, params, prob)` applies one to a batch.

Randomness comes from a NumPy generator owned by the run, not from the device: λ, partners and boxes
are then identical on CPU and GPU and across runs that share a seed, which is what makes runs that
differ only in student or temperature a paired comparison.

A package like `models` and `data`: `base` holds the registries and `MixResult`, the variants register
themselves in `mixers` and `transmix`, and nothing below imports this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from ..config import Mix
from .base import MIXERS, MODEL_NEEDS, MixResult, identity, smooth_one_hot


@dataclass
class Mixer:
    """A named mixing variant applied with probability `prob` per batch. Its parameters were checked when
    the study was read."""

    name: str
    params: dict = field(default_factory=dict)
    prob: float = 1.0

    def __post_init__(self):
        self.fn = MIXERS.get(self.name, "mix.name")

    @classmethod
    def of(cls, mix: Mix) -> "Mixer":
        return cls(mix.name, mix.kwargs(), mix.prob)

    def __call__(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> MixResult:
        if self.prob < 1.0 and rng.random() >= self.prob:
            return identity(x, y)
        return self.fn(x, y, rng, **self.params)


# Importing the variants registers them.
from . import mixers, transmix  # noqa: E402,F401
from .mixers import cutmix, fmu, manifold_mixup, mixup, mixup_cutmix, none, pmu, resizemix  # noqa: E402
from .transmix import WITHOUT_RELABEL, mixup_transmix  # noqa: E402

__all__ = ["MIXERS", "MODEL_NEEDS", "MixResult", "Mixer", "WITHOUT_RELABEL", "cutmix", "fmu", "identity",
           "manifold_mixup", "mixup", "mixup_cutmix", "mixup_transmix", "none", "pmu", "resizemix",
           "smooth_one_hot"]
