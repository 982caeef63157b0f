"""TransMix (Chen et al., CVPR 2022): CutMix whose label weight is re-set by the student's attention.

The box is CutMix's; after the student's forward, λ (the weight of y_a) becomes

    λ = (λ_area + λ_attn) / 2,    λ_attn = 1 - Σ_p A_p·M_p / Σ_p A_p

A: the class token's attention to the patch tokens in the last block, softmax over all tokens,
averaged over heads, detached; M: the pasted-region mask downsampled to the patch grid by
nearest-neighbour sampling (the top-left pixel of each patch when the grid divides the image);
λ_area: the pixel share of the base image. This is the official code (Beckschen/TransMix,
transmix.py `Mixup_transmix.transmix_label`: lam0 = box area, mask through `nn.Upsample` (nearest),
lam1 = w2 / (w1 + w2), lam = (lam0 + lam1) / 2 as the *partner's* weight, i.e. 1 - λ here; the
attention is `mean(attn[:, :, 0, 1:], heads)` of the last block, taken before attn_drop, in their
timm fork's vision_transformer.py). The paper describes λ as the attention sum alone (Fig. 1);
the official code averages it with the area ratio (its `ratio=0.5` argument is unused, the 1/2 is
hard-coded), and that average is what is implemented. Where the reference slices off only the
class token (`1:`), all prefix tokens (class, register, distillation) are dropped here. The
reference only relabels CutMix batches: it switches between mixup and CutMix as DeiT does, and that
is `mixup_transmix`; the `transmix` mixer is its CutMix branch alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import MixkdError
from .base import MIXERS, MODEL_NEEDS, MixResult
from .mixers import cutmix, switched

# what each relabelling mixer computes where the model trained does not see its batch (a teacher's view, a
# student on clean images): nothing relabels it, so it is the plain mix
WITHOUT_RELABEL = {"transmix": "cutmix", "mixup_transmix": "mixup_cutmix"}


@dataclass
class TransMixResult(MixResult):
    """A CutMix result (λ = box-area ratio) whose final λ needs the student's attention: see `relabel`."""

    def relabel(self, cls_attention: Tensor, grid: tuple[int, int]) -> MixResult:
        """The same mix with λ = (λ_area + λ_attn) / 2 (module docstring); cls_attention: (B, grid_h·grid_w)."""
        if cls_attention.shape != (len(self.lam), grid[0] * grid[1]):
            raise ValueError(f"cls_attention has shape {tuple(cls_attention.shape)}, "
                             f"expected ({len(self.lam)}, {grid[0] * grid[1]}) for a {grid} patch grid")
        pasted = F.interpolate(self.mask.float(), size=tuple(grid), mode="nearest").flatten(1)
        attn = cls_attention.float()
        lam_attn = 1.0 - (attn * pasted).sum(1) / attn.sum(1)
        lam = (self.lam + lam_attn.to(self.lam.dtype)) / 2
        return MixResult(**{**{f.name: getattr(self, f.name) for f in fields(MixResult)}, "lam": lam})

    def forward_student(self, net: nn.Module, x: Tensor,
                        taps: frozenset[str] | None = None) -> tuple[object, MixResult]:
        with ClassAttention(net) as cap:
            out = self.forward(net, x, taps)
        return out, self.relabel(cap.attention, cap.grid)


@MIXERS.register()
def transmix(x: Tensor, y: Tensor, rng: np.random.Generator, alpha: float = 1.0,
             per_sample: bool = False) -> TransMixResult:
    """Chen et al. 2022: a CutMix box (one per batch by default, as the reference's mode='batch');
    λ stays the area ratio until `TransMixResult.relabel` is given the student's class attention."""
    mix = cutmix(x, y, rng, alpha=alpha, per_sample=per_sample)
    return TransMixResult(**{f.name: getattr(mix, f.name) for f in fields(MixResult)})


@MIXERS.register()
def mixup_transmix(x: Tensor, y: Tensor, rng: np.random.Generator, mixup_alpha: float = 0.8,
                   cutmix_alpha: float = 1.0, switch_prob: float = 0.5) -> MixResult:
    """TransMix's own recipe (the reference's `Mixup_transmix` on DeiT's mixing): `mixup_cutmix`'s switch,
    its CutMix batches relabelled by the student's attention, its mixup batches left as they are."""
    return switched(x, y, rng, mixup_alpha, cutmix_alpha, switch_prob, cut=transmix)


@MODEL_NEEDS.register("transmix")
@MODEL_NEEDS.register("mixup_transmix")
def _attends(model: nn.Module, relabels: bool, **_) -> None:
    """A model whose forward relabels the mix needs a class token's attention; others see a CutMix batch."""
    if relabels:
        ClassAttention(model)


class ClassAttention:
    """While active (`with ClassAttention(student) as cap:`), each forward of the model stores in
    `cap.attention` the class token's attention to the patch tokens in its last block, averaged over
    heads: (B, num_patches), detached. `cap.grid` is the patch grid (rows, cols).

    timm's fused attention never materialises the weights, so a forward hook on the last block's
    `attn` recomputes softmax(q_cls·scale·kᵀ) from that module's input with its own qkv, q_norm,
    k_norm and scale: no fork of timm, and the model's own forward stays fused. Takes a raw timm
    VisionTransformer or a TimmNet wrapping one.
    """

    def __init__(self, model: nn.Module):
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer

        vit = getattr(model, "timm_model", model)
        blocks = getattr(vit, "blocks", None)
        has_blocks = isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0
        attn = getattr(blocks[-1], "attn", None) if has_blocks else None
        if not (isinstance(vit, VisionTransformer) and isinstance(attn, Attention) and vit.cls_token is not None):
            raise MixkdError(f"TransMix needs a ViT student with a class token (a timm ViT/DeiT, e.g. "
                             f"timm/deit_tiny_patch16_224); {type(vit).__name__} has no such blocks[-1].attn")
        self.attn_module = attn
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.grid = tuple(vit.patch_embed.grid_size)
        self.attention: Tensor | None = None
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        x = args[0]
        b, n, _ = x.shape
        with torch.no_grad():
            q, k, _ = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
            q, k = module.q_norm(q[:, :, :1]), module.k_norm(k)  # the class token is token 0 in timm
            attn = ((q * module.scale) @ k.transpose(-2, -1)).float().softmax(-1)  # (B, heads, 1, N)
            self.attention = attn.mean(1)[:, 0, self.num_prefix_tokens:]

    def __enter__(self) -> "ClassAttention":
        self._handle = self.attn_module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
