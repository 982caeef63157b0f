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

from .mixing import MixResult, check_params
from .registry import Registry

LOSSES: Registry = Registry("loss")


@dataclass
class LossInputs:
    student_logits: Tensor
    targets: Tensor  # (B, K) label distribution of what the student saw
    teacher_probs: Tensor | None  # (B, K) from `teacher_probs`, after the view's interpolation; None without KD
    mix: MixResult  # y_a, y_b, λ for losses that need the target classes
    epoch: int  # 1-based, for warm-ups


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
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        return F.softmax(teacher_logits / self.temperature, dim=1)

    def __call__(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets),
                "kd": self.kd_weight * kd_kl(inp.student_logits, inp.teacher_probs, self.temperature)}


LOSSES.register("ce")(CE)
LOSSES.register("kd")(KD)


def create_loss(name: str, temperature: float | None = None, **params):
    cls = LOSSES.get(name, "loss.name")
    check_params(cls.__init__, params, f"loss ({name})", skip=2)
    return cls(temperature=temperature, **params) if temperature is not None else cls(**params)
