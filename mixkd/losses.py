"""Distillation losses: pure functions plus small registered classes that bind their parameters.

Every loss returns a dict of *weighted* named parts (their sum is what is optimised), so each part is
logged on its own. A loss also says how teacher logits become the target distribution
(`teacher_probs`): the `student` mixed view interpolates those probabilities across partners,
which is only meaningful after the loss's own temperature and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .mixing import MixResult
from .registry import Registry

# A loss: a class built with the run's distillation temperature (an axis of its own) and its parameters.
LOSSES: Registry = Registry("loss", inputs=("temperature",))


@dataclass
class LossInputs:
    student_logits: Tensor
    targets: Tensor  # (B, K) label distribution of what the student saw
    teacher_probs: Tensor | None  # (B, K) from `teacher_probs`, after the view's interpolation; None without KD
    mix: MixResult  # y_a, y_b, λ for losses that need the target classes
    epoch: int  # 1-based, for warm-ups


def non_negative(**weights: float) -> None:
    """A negative weight would ascend its loss part: refused where a study names it."""
    for name, value in weights.items():
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value!r}")


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against a distribution; equals F.cross_entropy for one-hot targets."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kd_kl(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """Hinton et al.: KL(p_T ‖ softmax(z_s / T)) · T², averaged over the batch.

    The T² keeps gradient magnitudes comparable across temperatures (soft-target gradients scale as 1/T²).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p_s, teacher_probs, reduction="batchmean") * temperature**2


class CE:
    """Plain (mixed-)label cross-entropy: teachers and students trained from scratch."""

    uses_teacher = False

    def __init__(self, temperature: float | None = None):
        self.temperature = temperature

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        raise TypeError("the ce loss uses no teacher")

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"ce": soft_cross_entropy(inp.student_logits, inp.targets)}


class KD:
    """Hinton KD: ce_weight·CE(labels) + kd_weight·T²·KL(teacher ‖ student) (RepDistiller's 0.1 / 0.9)."""

    uses_teacher = True

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9):
        non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        return F.softmax(teacher_logits / self.temperature, dim=1)

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets),
                "kd": self.kd_weight * kd_kl(inp.student_logits, inp.teacher_probs, self.temperature)}


LOSSES.register("ce")(CE)
LOSSES.register("kd")(KD)


def standardize(logits: Tensor) -> Tensor:
    """MIX-KD's logit standardisation: z / std(z) per sample over classes (unbiased std, as torch.std).

    The mean is not subtracted; softmax ignores it anyway. The clamp only guards constant logits.
    """
    return logits / logits.std(dim=1, keepdim=True).clamp_min(1e-12)


@LOSSES.register("std_kd")
class StdKD:
    """MIX-KD's MIXSTDLoss (Choi et al. WACV 2023): γ·CE + α·KL on std-standardised logits, no T².

    As the reference: CE(softmax(z_s/std_s), mixed labels)·ce_weight + KL(softmax(z_t/std_t) ‖
    softmax(z_s/std_s))·kd_weight, batch mean, γ = 0.1, α = 0.9. Note the CE term, too, sees the
    standardised student logits. The reference uses no temperature (its kd_T is unused by this
    loss): T = 1 reproduces it; another T divides both standardised logits in the KL term only.
    """

    uses_teacher = True

    def __init__(self, temperature: float = 1.0, ce_weight: float = 0.1, kd_weight: float = 0.9):
        non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        return F.softmax(standardize(teacher_logits) / self.temperature, dim=1)

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        z = standardize(inp.student_logits)
        log_p_s = F.log_softmax(z / self.temperature, dim=1)
        return {"ce": self.ce_weight * soft_cross_entropy(z, inp.targets),
                "kd": self.kd_weight * F.kl_div(log_p_s, inp.teacher_probs, reduction="batchmean")}


def kl_rows(p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) per row, with 0·log 0 = 0."""
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1)


def dkd_terms(student_logits: Tensor, teacher_probs: Tensor, target: Tensor, temperature: float):
    """Per-sample (TCKD, NCKD) of Zhao et al. w.r.t. class `target`, the teacher given as probabilities at T.

    TCKD: KL between binary (target, rest) distributions; NCKD: KL between distributions over the
    non-target classes, renormalised. Same values as mdistiller's `dkd_loss` before its T² and weights.
    """
    gt = torch.zeros_like(teacher_probs, dtype=torch.bool).scatter_(1, target[:, None], True)
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_rest = torch.logsumexp(log_p.masked_fill(gt, float("-inf")), dim=1)
    p_gt, p_rest = (teacher_probs * gt).sum(dim=1), (teacher_probs * ~gt).sum(dim=1)
    log_p_gt = log_p.gather(1, target[:, None]).squeeze(1)  # not log_p[gt]: a mask index syncs a GPU
    tckd = kl_rows(torch.stack([p_gt, p_rest], 1), torch.stack([log_p_gt, log_rest], 1))
    q_t = teacher_probs * ~gt / p_rest.clamp_min(1e-30)[:, None]  # a saturated teacher: no NCKD signal
    nckd = kl_rows(q_t, log_p - log_rest[:, None])
    return tckd, nckd


@LOSSES.register("dkd")
class DKD:
    """Decoupled KD (Zhao et al. CVPR 2022), as mdistiller's DKD, from teacher probabilities.

    ce_weight·CE + w·T²·(alpha·TCKD + beta·NCKD) with w = min(epoch / warmup, 1) (warm-up scales the
    KD part only, as in mdistiller). With mixed labels the decoupling is done w.r.t. y_a with weight λ
    plus w.r.t. y_b with weight 1-λ per sample, which is standard DKD when λ = 1. The teacher enters as
    probabilities at T (possibly interpolated across mix partners) rather than logits.
    """

    uses_teacher = True

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0,
                 warmup: int = 20):
        non_negative(ce_weight=ce_weight, alpha=alpha, beta=beta, warmup=warmup)
        self.temperature, self.ce_weight, self.alpha, self.beta, self.warmup = (
            temperature, ce_weight, alpha, beta, warmup)

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        return F.softmax(teacher_logits / self.temperature, dim=1)

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        m, t = inp.mix, self.temperature
        lam = m.lam.to(inp.student_logits.dtype)
        a = dkd_terms(inp.student_logits, inp.teacher_probs, m.y_a, t)
        b = dkd_terms(inp.student_logits, inp.teacher_probs, m.y_b, t)
        scale = min(inp.epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        tckd, nckd = ((lam * pa + (1 - lam) * pb).mean() for pa, pb in zip(a, b))
        return {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets),
                "tckd": scale * self.alpha * t**2 * tckd,
                "nckd": scale * self.beta * t**2 * nckd}


def create_loss(name: str, temperature: float | None = None, **params):
    """Loss `name` at `temperature` (its default when None) with `params`, checked when the study was read."""
    cls = LOSSES.get(name, "loss.name")
    return cls(temperature=temperature, **params) if temperature is not None else cls(**params)
