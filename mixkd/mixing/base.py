"""What every mixer shares: the registries, the result of a mix and how models and losses read it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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

    def forward(self, net, x: Tensor) -> Tensor:
        """`net`'s logits on this mixed batch; `x` is the clean batch, which manifold mixup starts from."""
        if self.stage is not None:
            return net(x, mix_at=self.stage, mix_fn=self.mix_hidden)
        return net(self.x)

    def forward_student(self, net, x: Tensor) -> tuple[Tensor, "MixResult"]:
        """The student's logits and the mix its targets come from; variants whose labels depend on
        the student's forward (TransMix) return a relabelled mix."""
        return self.forward(net, x), self


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
