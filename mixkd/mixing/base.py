"""What every mixer shares: the registries, the result of a mix and how models and losses read it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.base import Features
from ..registry import Registry

# A mixer: (images, labels, generator, **params) → MixResult. `prob`, the chance a batch is mixed, is the
# caller's (`Mixer`), with its default for study files.
MIXERS: Registry = Registry("mixer", inputs=("x", "y", "rng"), settings={"prob": 1.0})
# What a mixer needs of a model its mix is applied to, checked on the meta device when a study is read:
# name → check(model, relabels, **params) raising ValueError; relabels: the mix's labels may come from this
# model's forward (it is the model trained, and it sees the mixed batch)
MODEL_NEEDS: Registry = Registry("model check", inputs=("model", "relabels"))


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
        lam = self.lam[:, None].float()
        return (lam * smooth_one_hot(self.y_a, num_classes, smoothing)
                + (1 - lam) * smooth_one_hot(self.y_b, num_classes, smoothing))

    def interpolate(self, values: Tensor) -> Tensor:
        """λ·v + (1-λ)·v[index] per sample, e.g. teacher probabilities of the clean batch. Blended in fp32
        whatever `values`' precision (bf16 hidden states: a λ rounded to bf16 would not be the labels' λ)."""
        dtype = torch.promote_types(values.dtype, torch.float32)
        lam = self.lam.view(-1, *([1] * (values.dim() - 1))).to(dtype)
        return (lam * values.to(dtype) + (1 - lam) * values[self.index].to(dtype)).to(values.dtype)

    def mix_hidden(self, h: Tensor) -> Tensor:
        """What manifold mixup applies to the hidden state in front of `stage` (StagedNet's mix_fn)."""
        return self.interpolate(h)

    def blend(self, q: Tensor) -> Tensor:
        """A clean batch's quantity `q` (logits, pooled features, a feature map) mixed the way the inputs were,
        for a teacher that saw the clean batch while its student saw this mix: λ-blended across partners, or for
        a pasted box, each cell of a map taking the partner's value in proportion to the box's share of it (the
        mask average-pooled to the map's size: exact where the box lines up with the grid)."""
        if self.mask is None or q.dim() != 4:
            return self.interpolate(q)
        m = F.adaptive_avg_pool2d(self.mask.to(torch.float32), q.shape[-2:]).to(q.dtype)
        return (1 - m) * q + m * q[self.index]

    def blend_features(self, f: Features) -> Features:
        """`blend` of every feature of a clean forward (`student` view). Under manifold mixup only what lies
        downstream of the mixing point is mixed: the maps of stages from `stage` on, and the pooled vector."""
        start = 0 if self.stage is None else self.stage

        def maps(values: list[Tensor] | None) -> list[Tensor] | None:
            return None if values is None else [self.blend(v) if i >= start else v for i, v in enumerate(values)]

        stem = f.stem if f.stem is None or self.stage is not None else self.blend(f.stem)
        return Features(maps(f.stages), self.blend(f.pooled), stem, maps(f.maps), maps(f.preact))

    def forward(self, net, x: Tensor, taps: frozenset[str] | None = None):
        """`net`'s logits on this mixed batch, and with `taps` its Features too (`(logits, features)`); `x` is the
        clean batch, which manifold mixup starts from."""
        features = {} if taps is None else {"return_features": True, "taps": taps}
        if self.stage is not None:
            return net(x, mix_at=self.stage, mix_fn=self.mix_hidden, **features)
        return net(self.x, **features)

    def forward_student(self, net, x: Tensor, taps: frozenset[str] | None = None) -> tuple[object, "MixResult"]:
        """The student's logits (with `taps`, `(logits, features)`) and the mix its targets come from; variants
        whose labels depend on the student's forward (TransMix) return a relabelled mix."""
        return self.forward(net, x, taps), self


def smooth_one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(1-s)·onehot(y) + s/K: label smoothing spreads mass s uniformly over all K classes."""
    off = smoothing / num_classes
    full = torch.full((len(y), num_classes), off, device=y.device)
    return full.scatter_(1, y[:, None], 1 - smoothing + off)


def identity(x: Tensor, y: Tensor) -> MixResult:
    n = len(y)
    return MixResult(x, y, y, torch.ones(n, device=x.device), torch.arange(n, device=x.device))


def on_device(values: np.ndarray, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Host-drawn values on `like`'s device. On CUDA via pinned memory and a non-blocking copy: a copy from
    pageable memory makes the host wait for the GPU's queue to drain, once per copy, every step."""
    t = torch.as_tensor(values, dtype=dtype)
    if like.device.type != "cuda":
        return t.to(like.device)
    return t.pin_memory().to(like.device, non_blocking=True)
