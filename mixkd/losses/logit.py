"""Logit distillation: the losses that read only the student's logits and the teacher's probabilities (CE, KD,
MIX-KD's std_kd, DKD, DIST), and logit standardisation (Sun et al., CVPR 2024) as an option of KD, DKD and DIST.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LOSSES, LossInputs, kd_kl, non_negative, soft_cross_entropy
from .functional import dist_relations, standardise


class Standardisable:
    """What KD, DKD and DIST share: the `standardise` option (z-scored logits, Sun et al., CVPR 2024) applied to
    both nets' logits, and the teacher's probabilities at the run's temperature."""

    temperature: float
    standardise: bool

    def logits(self, z: Tensor) -> Tensor:
        return standardise(z) if self.standardise else z

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        return F.softmax(self.logits(teacher_logits) / self.temperature, dim=1)


class CE:
    """Plain (mixed-)label cross-entropy: teachers and students trained from scratch."""

    uses_teacher = False

    def __init__(self, temperature: float | None = None):
        self.temperature = temperature

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        raise TypeError("the ce loss uses no teacher")

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"ce": soft_cross_entropy(inp.student_logits, inp.targets)}


class KD(Standardisable):
    """Hinton KD: ce_weight·CE(labels) + kd_weight·T²·KL(teacher ‖ student) (RepDistiller's 0.1 / 0.9).

    `standardise`: logit standardisation (Sun et al., CVPR 2024; their CIFAR-100 setting: T 2, kd_weight 9,
    ce_weight 0.1): both nets' logits z-scored per sample before the softmax at T, which is KD at a per-sample
    temperature T·σ(z); the CE keeps the raw logits. (MIX-KD's `std_kd` is its special case: no centring,
    which softmax ignores anyway, T = 1, no T², and its CE on the standardised logits too.)
    """

    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, NIPS DL Workshop 2014"
    uses_teacher = True

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9,
                 standardise: bool | None = None):
        non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight
        self.standardise = bool(standardise)

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets),
                "kd": self.kd_weight * kd_kl(self.logits(inp.student_logits), inp.teacher_probs, self.temperature)}


LOSSES.register("ce")(CE)
LOSSES.register("kd")(KD)


def standardize(logits: Tensor) -> Tensor:
    """MIX-KD's logit standardisation: z / std(z) per sample over classes (unbiased std, as torch.std).

    The mean is not subtracted; softmax ignores it anyway. The clamp only guards constant logits.
    """
    return logits / logits.std(dim=1, keepdim=True).clamp_min(1e-12)


@LOSSES.register("std_kd")
class StdKD:
    """MIX-KD's MIXSTDLoss (Choi et al. WACV 2023): γ·CE + α·KL on std-standardised logits, no T². A special case
    of logit standardisation (`kd` with `standardise: true`): no centring, T = 1, no T², the CE standardised too.

    As the reference: CE(softmax(z_s/std_s), mixed labels)·ce_weight + KL(softmax(z_t/std_t) ‖
    softmax(z_s/std_s))·kd_weight, batch mean, γ = 0.1, α = 0.9. Note the CE term, too, sees the
    standardised student logits. The reference uses no temperature (its kd_T is unused by this
    loss): T = 1 reproduces it; another T divides both standardised logits in the KL term only.
    """

    paper = "Choi et al., Understanding the Role of Mixup in Knowledge Distillation, WACV 2023"
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
class DKD(Standardisable):
    """Decoupled KD (Zhao et al. CVPR 2022), as mdistiller's DKD, from teacher probabilities.

    ce_weight·CE + w·T²·(alpha·TCKD + beta·NCKD) with w = min(epoch / warmup, 1) (warm-up scales the
    KD part only, as in mdistiller). With mixed labels the decoupling is done w.r.t. y_a with weight λ
    plus w.r.t. y_b with weight 1-λ per sample, which is standard DKD when λ = 1. The teacher enters as
    probabilities at T (possibly interpolated across mix partners) rather than logits.
    """

    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"
    uses_teacher = True

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0,
                 warmup: int = 20, standardise: bool | None = None):
        non_negative(ce_weight=ce_weight, alpha=alpha, beta=beta, warmup=warmup)
        self.temperature, self.ce_weight, self.alpha, self.beta, self.warmup = (
            temperature, ce_weight, alpha, beta, warmup)
        self.standardise = bool(standardise)  # DKD on z-scored logits (Sun et al., CVPR 2024), as `kd`'s

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        m, t = inp.mix, self.temperature
        lam = m.lam.to(inp.student_logits.dtype)
        z = self.logits(inp.student_logits)
        a, b = dkd_terms(z, inp.teacher_probs, m.y_a, t), dkd_terms(z, inp.teacher_probs, m.y_b, t)
        scale = min(inp.epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0
        tckd, nckd = ((lam * pa + (1 - lam) * pb).mean() for pa, pb in zip(a, b))
        return {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets),
                "tckd": scale * self.alpha * t**2 * tckd,
                "nckd": scale * self.beta * t**2 * nckd}


@LOSSES.register("dist")
class DIST(Standardisable):
    """DIST (Huang et al., NeurIPS 2022; hunto/image_classification_sota `dist_kd.py`): ce_weight·CE +
    kd_weight·τ²·(β·(1 − inter-class Pearson) + γ·(1 − intra-class Pearson)) of softmax(z / τ). Defaults are
    the reference's CIFAR-100 setting (τ 4, β = γ = 1, CE 1, kd_weight 2). `standardise` z-scores both nets'
    logits first, as `kd`'s (an extension: the logit-standardisation paper has no DIST code)."""

    paper = "Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022"
    uses_teacher = True

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 2.0, beta: float = 1.0,
                 gamma: float = 1.0, standardise: bool | None = None):
        non_negative(ce_weight=ce_weight, kd_weight=kd_weight, beta=beta, gamma=gamma)
        self.temperature, self.ce_weight, self.kd_weight, self.beta, self.gamma = (
            temperature, ce_weight, kd_weight, beta, gamma)
        self.standardise = bool(standardise)

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        t = self.temperature
        y_s = F.softmax(self.logits(inp.student_logits) / t, dim=1)
        return {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets),
                "dist": self.kd_weight * t**2 * dist_relations(y_s, inp.teacher_probs, self.beta, self.gamma)}
