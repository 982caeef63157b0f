"""The mixing variants, as pure functions: (images, labels, rng, **params) → MixResult.

Convention: a mixed sample is `λ·x + (1-λ)·x[index]` (or x with a region pasted from x[index]);
its label is y_a with weight λ and y_b = y[index] with weight 1-λ. λ is per sample, shape (B,).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .base import MIXERS, MODEL_NEEDS, MixResult, identity, on_device


def draw_lam(rng: np.random.Generator, alpha: float, n: int, per_sample: bool) -> np.ndarray:
    """λ ~ Beta(α, α), one per batch (repeated) or one per sample. α must be > 0: a mixer that did not mix
    would still train under its own label (`mix: none`, or `prob`, say that)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (λ ~ Beta(α, α)), got {alpha!r}; no mixing is mix: none")
    return rng.beta(alpha, alpha, size=n) if per_sample else np.full(n, rng.beta(alpha, alpha))


def partners(rng: np.random.Generator, n: int, like: Tensor) -> Tensor:
    return on_device(rng.permutation(n), like)


def blend(x: Tensor, y: Tensor, index: np.ndarray, lam: np.ndarray) -> MixResult:
    """The convex combination λ·x + (1-λ)·x[index] shared by the mixup family."""
    index, lam_t = on_device(index, x), on_device(lam, x, x.dtype)
    w = lam_t.view(-1, *([1] * (x.dim() - 1)))
    return MixResult(w * x + (1 - w) * x[index], y, y[index], lam_t, index)


@MIXERS.register()
def none(x: Tensor, y: Tensor, rng: np.random.Generator) -> MixResult:
    """No mixing: the clean batch with its hard labels."""
    return identity(x, y)


@MIXERS.register()
def mixup(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0, per_sample: bool = False) -> MixResult:
    """Zhang et al. 2018: convex combination of image pairs and of their labels.

    One λ per batch by default, as in the reference; `per_sample` draws one λ per sample.
    """
    index = rng.permutation(len(y))
    return blend(x, y, index, draw_lam(rng, alpha, len(y), per_sample))


@MIXERS.register()
def fmu(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0) -> MixResult:
    """MIX-KD's full mixup (Choi et al. WACV 2023, `FMU`): every sample mixed, λ ~ Beta(α, α) per sample.

    The reference mixes x[rp1[i]] with x[rp2[i]] for two random permutations; that is the same
    distribution as mixing x[i] with x[π(i)] for one random permutation π (as here), up to batch order.
    α is the reference's `beta_a` (default 1.0).
    """
    return mixup(x, y, rng, alpha=alpha, per_sample=True)


@MIXERS.register()
def pmu(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0, mixed_fraction: float = 0.1,
        reference_sampling: bool = False) -> MixResult:
    """MIX-KD's partial mixup (`PMU`): FMU, then part of the batch is left clean (λ = 1, partner = itself).

    Default: exactly round(mixed_fraction·B) samples (half up), chosen without replacement, are mixed
    (λ ~ Beta, partner from a permutation of the whole batch, which may be the sample itself, as in mixup).
    `reference_sampling: true` reproduces the reference instead: it draws int(B·partmixup) indices
    *with* replacement (torch.randint) and sets their λ to 1, with partmixup = 1 - mixed_fraction.
    Its nominal "10% mixed" (partmixup 0.9) thus mixes B·(1-1/B)^int(0.9B) samples on average:
    40.7% of a batch of 64; partmixup 1.0 still mixes ~37%. Every λ is drawn first, as there.
    """
    if not 0 <= mixed_fraction <= 1:
        raise ValueError(f"mixed_fraction must be in [0, 1], got {mixed_fraction!r}")
    n = len(y)
    index, lam = rng.permutation(n), draw_lam(rng, alpha, n, per_sample=True)
    if reference_sampling:
        clean = rng.integers(0, n, size=int(n * (1 - mixed_fraction) + 1e-9))
    else:
        clean = rng.choice(n, size=n - int(mixed_fraction * n + 0.5), replace=False)
    lam[clean], index[clean] = 1.0, clean
    return blend(x, y, index, lam)


@MIXERS.register()
def manifold_mixup(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 2.0,
                   stages: Sequence[int] = (0, 1, 2), per_sample: bool = False) -> MixResult:
    """Verma et al. 2019: mixup of the hidden state in front of a stage drawn uniformly from `stages`.

    `x` stays the clean batch; the model applies `mix_hidden` via
    `forward(x, mix_at=result.stage, mix_fn=result.mix_hidden)`. One λ per batch and α = 2 as in
    the reference's CIFAR runs. Stage 0 mixes the stem's output (the reference's layer 0 is the raw
    input; the same thing for models whose stem is the identity).
    """
    index = partners(rng, len(y), x)
    lam = on_device(draw_lam(rng, alpha, len(y), per_sample), x, x.dtype)
    return MixResult(x, y, y[index], lam, index, stage=int(stages[rng.integers(len(stages))]))


@MODEL_NEEDS.register("manifold_mixup")
def _has_stages(model, relabels: bool, stages: Sequence[int] = (0, 1, 2), **_) -> None:
    if not all(0 <= s <= model.num_stages for s in stages):
        raise ValueError(f"it mixes in front of stages {list(stages)}, and {type(model).__name__} mixes at stages "
                         f"0..{model.num_stages}")


def boxes(rng: np.random.Generator, cut: np.ndarray, h: int, w: int) -> tuple[np.ndarray, ...]:
    """Boxes of side int(cut·H) × int(cut·W), uniform centre, clipped to the image (CutMix's rand_bbox).

    Returns (y0, y1, x0, x1); an odd side loses a pixel (±side//2 around the centre), as in the reference.
    """
    n = len(cut)
    cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
    bh, bw = (h * cut).astype(int), (w * cut).astype(int)
    return (np.clip(cy - bh // 2, 0, h), np.clip(cy + bh // 2, 0, h),
            np.clip(cx - bw // 2, 0, w), np.clip(cx + bw // 2, 0, w))


def masks_of(box: tuple[np.ndarray, ...], h: int, w: int) -> np.ndarray:
    y0, y1, x0, x1 = box
    rows, cols = np.arange(h), np.arange(w)
    inside_r = (rows[None] >= y0[:, None]) & (rows[None] < y1[:, None])
    inside_c = (cols[None] >= x0[:, None]) & (cols[None] < x1[:, None])
    return inside_r[:, :, None] & inside_c[:, None, :]


def box_masks(rng: np.random.Generator, lam: np.ndarray, h: int, w: int) -> np.ndarray:
    """One box per sample with area ≈ (1-λ)·H·W and a uniform centre, clipped to the image (CutMix)."""
    return masks_of(boxes(rng, np.sqrt(1.0 - lam), h, w), h, w)


def box_lam(box: tuple[np.ndarray, ...], h: int, w: int) -> np.ndarray:
    """λ = 1 - (clipped box area) / (H·W): the exact share of pixels still from the base image."""
    y0, y1, x0, x1 = box
    return 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def pasted(x: Tensor, y: Tensor, index: np.ndarray, box: tuple[np.ndarray, ...], patch: Callable) -> MixResult:
    """Write `patch(partners, y0, y1, x0, x1)` into each sample's box (one box: shared by the batch)."""
    n, h, w = len(y), x.shape[-2], x.shape[-1]
    groups = [slice(None)] if len(box[0]) == 1 else [slice(i, i + 1) for i in range(n)]
    box = tuple(np.broadcast_to(b, (n,)) for b in box)
    index_t = on_device(index, x)
    out, src = x.clone(), x[index_t]
    for g in groups:
        y0, y1, x0, x1 = (int(b[g][0]) for b in box)
        if y1 > y0 and x1 > x0:
            out[g, ..., y0:y1, x0:x1] = patch(src[g], y0, y1, x0, x1)
    mask = on_device(masks_of(box, h, w), x, x.dtype)[:, None]
    lam = on_device(box_lam(box, h, w), x, x.dtype)
    return MixResult(out, y, y[index_t], lam, index_t, mask=mask)


@MIXERS.register()
def cutmix(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0, per_sample: bool = False) -> MixResult:
    """Yun et al. 2019: paste a box from the partner; λ is corrected to the box area after clipping.

    One λ and one box for the whole batch by default, as in the reference; `per_sample` draws both per sample.
    """
    n, h, w = len(y), x.shape[-2], x.shape[-1]
    index = rng.permutation(n)
    lam = draw_lam(rng, alpha, n if per_sample else 1, per_sample)
    box = boxes(rng, np.sqrt(1.0 - lam), h, w)
    return pasted(x, y, index, box, lambda s, y0, y1, x0, x1: s[..., y0:y1, x0:x1])


@MIXERS.register()
def resizemix(x: Tensor, y: Tensor, rng: np.random.Generator, scale: Sequence[float] = (0.1, 0.8),
              per_sample: bool = False, interpolation: str = "nearest") -> MixResult:
    """Qin et al. 2020: paste the whole partner, resized, into a random box; λ = 1 - pasted area.

    As openmixup's `resizemix` (which follows the paper): side ratio τ ~ U(scale), box as CutMix's with
    side int(τ·H), clipped to the image, and the partner resized to the *clipped* box (squeezed at a
    border); nearest interpolation; one τ and box per batch unless `per_sample`.
    (mmpretrain instead maps a Beta draw into [lam_min, lam_max] and uses bilinear resizing.)
    """
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be [low, high] with 0 < low ≤ high ≤ 1, got {list(scale)!r}")
    n, h, w = len(y), x.shape[-2], x.shape[-1]
    index = rng.permutation(n)
    tau = rng.uniform(scale[0], scale[1], size=n if per_sample else 1)
    box = boxes(rng, tau, h, w)
    return pasted(x, y, index, box,
                  lambda s, y0, y1, x0, x1: F.interpolate(s, size=(y1 - y0, x1 - x0), mode=interpolation))


def switched(x: Tensor, y: Tensor, rng: np.random.Generator, mixup_alpha: float, cutmix_alpha: float,
             switch_prob: float, cut: Callable = cutmix) -> MixResult:
    """DeiT's mixing, timm's `Mixup` in mode 'batch': each batch is `cut` (CutMix, box λ corrected to its area)
    with probability `switch_prob`, else mixup; both α are checked whichever branch this batch takes."""
    if not 0 <= switch_prob <= 1:
        raise ValueError(f"switch_prob must be in [0, 1] (the chance of a CutMix batch), got {switch_prob!r}")
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not alpha > 0:
            raise ValueError(f"{name} must be > 0 (λ ~ Beta(α, α)), got {alpha!r}; one mixer alone is mixup "
                             f"or cutmix")
    if rng.random() < switch_prob:
        return cut(x, y, rng, alpha=cutmix_alpha)
    return mixup(x, y, rng, alpha=mixup_alpha)


@MIXERS.register()
def mixup_cutmix(x: Tensor, y: Tensor, rng: np.random.Generator, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, switch_prob: float = 0.5) -> MixResult:
    """DeiT's recipe (Touvron et al. 2021; timm's `Mixup` with its defaults there): each batch CutMix (α 1.0)
    with probability `switch_prob`, else mixup (α 0.8); one λ per batch. timm pairs each sample with the
    batch's flip, here with a random permutation (which may pair a sample with itself). The box is that of the
    timm DeiT and TransMix pinned (≤ 0.5) and of CutMix's code, ±side//2 around its centre; timm ≥ 1.0 rounds
    the far side up, 1 pixel larger for odd sides."""
    return switched(x, y, rng, mixup_alpha, cutmix_alpha, switch_prob)
