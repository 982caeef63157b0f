"""Mixing variants as pure functions: (images, labels, rng, **params) → MixResult.

Randomness comes from a NumPy generator owned by the run, not from the device: λ, partners and boxes
are then identical on CPU and GPU and across runs that share a seed, which is what makes runs that
differ only in student or temperature a paired comparison.

Convention: a mixed sample is `λ·x + (1-λ)·x[index]` (or x with a region pasted from x[index]);
its label is y_a with weight λ and y_b = y[index] with weight 1-λ. λ is per sample, shape (B,).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError
from .registry import Registry

MIXERS: Registry = Registry("mixer")


@dataclass
class MixResult:
    x: Tensor  # the images a mixed view sees
    y_a: Tensor  # (B,) labels of the base samples
    y_b: Tensor  # (B,) labels of the partners
    lam: Tensor  # (B,) weight of y_a, in [0, 1]
    index: Tensor  # (B,) partner of each sample
    mask: Tensor | None = None  # (B, 1, H, W): 1 where the pixel comes from the partner
    stage: int | None = None  # manifold mixup: mix the hidden state in front of this stage instead of x

    def soft_targets(self, num_classes: int, smoothing: float = 0.0) -> Tensor:
        """λ·smooth(onehot(y_a)) + (1-λ)·smooth(onehot(y_b)): a distribution over classes per sample."""
        return self.interpolate(smooth_one_hot(self.y_a, num_classes, smoothing))

    def interpolate(self, values: Tensor) -> Tensor:
        """λ·v + (1-λ)·v[index] per sample, e.g. teacher probabilities of the clean batch."""
        lam = self.lam.view(-1, *([1] * (values.dim() - 1))).to(values.dtype)
        return lam * values + (1 - lam) * values[self.index]

    def mix_hidden(self, h: Tensor) -> Tensor:
        return self.interpolate(h)


def smooth_one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    off = smoothing / num_classes
    return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], 1 - smoothing + off)


def identity(x: Tensor, y: Tensor) -> MixResult:
    n = len(y)
    return MixResult(x, y, y, torch.ones(n, device=x.device), torch.arange(n, device=x.device))


def draw_lam(rng: np.random.Generator, alpha: float, n: int, per_sample: bool) -> np.ndarray:
    """λ ~ Beta(α, α), one per batch (repeated) or one per sample; α ≤ 0 means no mixing (λ = 1)."""
    if alpha <= 0:
        return np.ones(n)
    return rng.beta(alpha, alpha, size=n) if per_sample else np.full(n, rng.beta(alpha, alpha))


def partners(rng: np.random.Generator, n: int, device) -> Tensor:
    return torch.as_tensor(rng.permutation(n), device=device)


@MIXERS.register()
def none(x: Tensor, y: Tensor, rng: np.random.Generator) -> MixResult:
    return identity(x, y)


@MIXERS.register()
def mixup(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0, per_sample: bool = False) -> MixResult:
    """Zhang et al. 2018: convex combination of image pairs and of their labels."""
    index = partners(rng, len(y), x.device)
    lam = torch.as_tensor(draw_lam(rng, alpha, len(y), per_sample), dtype=x.dtype, device=x.device)
    w = lam.view(-1, *([1] * (x.dim() - 1)))
    return MixResult(w * x + (1 - w) * x[index], y, y[index], lam, index)


def box_masks(rng: np.random.Generator, lam: np.ndarray, h: int, w: int) -> np.ndarray:
    """One box per sample with area ≈ (1-λ)·H·W and a uniform centre, clipped to the image (CutMix)."""
    n = len(lam)
    cut = np.sqrt(1.0 - lam)
    cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
    bh, bw = (h * cut).astype(int), (w * cut).astype(int)
    y0, y1 = np.clip(cy - bh // 2, 0, h), np.clip(cy + bh // 2, 0, h)
    x0, x1 = np.clip(cx - bw // 2, 0, w), np.clip(cx + bw // 2, 0, w)
    rows, cols = np.arange(h), np.arange(w)
    inside_r = (rows[None] >= y0[:, None]) & (rows[None] < y1[:, None])
    inside_c = (cols[None] >= x0[:, None]) & (cols[None] < x1[:, None])
    return inside_r[:, :, None] & inside_c[:, None, :]


@MIXERS.register()
def cutmix(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0, per_sample: bool = False) -> MixResult:
    """Yun et al. 2019: paste a box from the partner; λ is corrected to the box area after clipping."""
    n, h, w = len(y), x.shape[-2], x.shape[-1]
    index = partners(rng, n, x.device)
    lam = draw_lam(rng, alpha, n, per_sample)
    if not per_sample:  # one box for the whole batch, as in the reference implementation
        masks = np.repeat(box_masks(rng, lam[:1], h, w), n, axis=0)
    else:
        masks = box_masks(rng, lam, h, w)
    mask = torch.as_tensor(masks, device=x.device, dtype=x.dtype)[:, None]
    lam_area = 1.0 - mask.mean(dim=(1, 2, 3))
    return MixResult(x * (1 - mask) + x[index] * mask, y, y[index], lam_area, index, mask=mask)


@dataclass
class Mixer:
    """A named mixing variant with validated parameters, applied with probability `prob` per batch."""

    name: str
    params: dict = field(default_factory=dict)
    prob: float = 1.0

    def __post_init__(self):
        self.fn: Callable[..., MixResult] = MIXERS.get(self.name, "mix.name")
        check_params(self.fn, self.params, f"mix ({self.name})", skip=3)

    def __call__(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> MixResult:
        if self.prob < 1.0 and rng.random() >= self.prob:
            return identity(x, y)
        return self.fn(x, y, rng, **self.params)


def check_params(fn: Callable, params: dict, where: str, skip: int = 0) -> None:
    """Reject keyword arguments the function does not take, naming those it does."""
    allowed = list(inspect.signature(fn).parameters)[skip:]
    allowed = [a for a in allowed if a not in ("kwargs", "_")]
    for key in params:
        if key not in allowed:
            raise ConfigError(where, f"unknown parameter {key!r}; allowed: {', '.join(allowed) or 'none'}")


def mixer_params(name: str) -> dict:
    """Parameter names and defaults of a registered mixer (for `mixkd list mixers`)."""
    sig = inspect.signature(MIXERS.get(name))
    return {k: p.default for k, p in list(sig.parameters.items())[3:]}
