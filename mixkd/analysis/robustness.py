"""Accuracy under L∞ adversarial attacks (FGSM, PGD) in pixel space, on a fixed subset of the evaluation set.

Models see normalised inputs x = (pixel − mean) / std, so an ε in pixel units [0, 1] becomes ε / std per
channel, and the valid image range [0, 1] becomes [−mean / std, (1 − mean) / std]. Attacks take those
bounds as tensors broadcastable to the input, so they stay correct for any normalisation.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ANALYSES, RunOutputs, row, writes

EPSILONS = (1 / 255, 2 / 255, 4 / 255)


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ of the summed cross-entropy; the parameters' .grad are left untouched."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)[0]


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Goodfellow et al. 2015: one step of size ε along the gradient's sign, clamped to the valid range."""
    return torch.clamp(x + eps * input_gradient(model, x, y).sign(), lo, hi)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, lo: Tensor, hi: Tensor, steps: int = 10,
        step: Tensor | None = None) -> Tensor:
    """Madry et al. 2018 without the random start: `steps` signed-gradient steps (default ε/4), each projected
    back onto the ε-ball around x and the valid range."""
    step = eps / 4 if step is None else step
    adv = x
    for _ in range(steps):
        adv = adv + step * input_gradient(model, adv, y).sign()
        adv = torch.clamp(torch.minimum(torch.maximum(adv, x - eps), x + eps), lo, hi)
    return adv


ATTACKS = {"fgsm": fgsm, "pgd10": partial(pgd, steps=10)}


@ANALYSES.register()
@writes(robust_top1="top-1 under FGSM and PGD-10 at each ε on the first 500 evaluation images (attack, epsilon)")
def robustness(run: RunOutputs, samples: int = 500, epsilons: tuple = EPSILONS) -> list[dict]:
    """Top-1 under each attack at each ε (pixel units; the row at ε = 0 is the clean accuracy of the same subset)
    on the first `samples` evaluation images. Needs the dataset's normalisation (`mean`, `std`); skipped without.

    All ε are attacked in one stacked batch (per-sample ε; eval mode keeps samples independent), cut into
    chunks of the evaluation batch size: one gradient call per step for every ε, memory bounded."""
    mean, std = getattr(run.data, "mean", None), getattr(run.data, "std", None)
    if mean is None or std is None:
        return []
    x, y = next(iter(run.data.eval_loader(samples, run.device)))  # one batch: the first `samples` images
    mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    lo, hi = -mean / std, (1 - mean) / std
    n, model = len(y), run.model.eval()
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).double().mean().item()
    rows = [row("robust_top1", clean, attack=name, epsilon=0.0) for name in ATTACKS]
    xs, ys = x.repeat(len(epsilons), 1, 1, 1), y.repeat(len(epsilons))
    eps = torch.tensor(epsilons, device=x.device).repeat_interleave(n).view(-1, 1, 1, 1) / std
    b = run.config.eval_batch_size
    for name, attack in ATTACKS.items():
        correct = torch.cat([_correct(model, attack, xs[i:i + b], ys[i:i + b], eps[i:i + b], lo, hi)
                             for i in range(0, len(ys), b)])
        rows += [row("robust_top1", acc, attack=name, epsilon=e)
                 for e, acc in zip(epsilons, correct.view(len(epsilons), n).double().mean(dim=1).tolist())]
    return rows


def _correct(model: nn.Module, attack, x: Tensor, y: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    adv = attack(model, x, y, eps, lo, hi)
    with torch.no_grad():
        return model(adv).argmax(dim=1) == y
