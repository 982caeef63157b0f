"""timm's RandomErasing (Zhong et al. 2020; DeiT: probability 0.25, per-pixel normal noise) on a whole batch.

timm loops over the images of a batch in Python, drawing from Python's `random`; here every image draws its
own box from the loader's generator at once: with probability `prob`, up to 10 attempts at an area uniform
in [2%, 1/3] of the image and a log-uniform aspect ratio in [0.3, 1/0.3], the first that fits is erased
with N(0, 1) noise (the images are already normalised, so that is noise of the data's own scale).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ATTEMPTS, MIN_AREA, MAX_AREA, MIN_ASPECT = 10, 0.02, 1 / 3, 0.3  # timm's defaults, which DeiT keeps


def random_erasing(x: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """`x` (B, C, H, W) normalised, with each image's box (if it drew one) replaced by N(0, 1) noise."""
    b, c, h, w = x.shape
    g, device = generator, x.device
    erase = torch.rand(b, device=device, generator=g) <= prob
    area = (MIN_AREA + (MAX_AREA - MIN_AREA) * torch.rand(b, ATTEMPTS, device=device, generator=g)) * (h * w)
    log_ratio = math.log(MIN_ASPECT) * (1 - 2 * torch.rand(b, ATTEMPTS, device=device, generator=g))
    heights = (area * log_ratio.exp()).sqrt().round()  # round half to even, as Python's round() in timm
    widths = (area / log_ratio.exp()).sqrt().round()
    fits = (heights < h) & (widths < w)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
    erase &= fits.any(1)
    bh, bw = heights.gather(1, first).squeeze(1), widths.gather(1, first).squeeze(1)
    top = (torch.rand(b, device=device, generator=g) * (h - bh + 1)).floor()  # randint(0, h - bh)
    left = (torch.rand(b, device=device, generator=g) * (w - bw + 1)).floor()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + bh).view(-1, 1, 1))
           & (cols >= left.view(-1, 1, 1)) & (cols < (left + bw).view(-1, 1, 1)) & erase.view(-1, 1, 1))
    noise = torch.randn(x.shape, device=device, generator=g, dtype=x.dtype)
    return torch.where(box.unsqueeze(1), noise, x)
