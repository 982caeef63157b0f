"""How closely a student follows its teacher on the evaluation set (students with a teacher only)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import ANALYSES, RunOutputs, row, writes


def agreement(teacher: Tensor, student: Tensor) -> float:
    """Fraction of samples on which both predict the same class."""
    return (teacher.argmax(dim=1) == student.argmax(dim=1)).double().mean().item()


def kl_divergence(teacher: Tensor, student: Tensor, temperature: float = 1.0) -> float:
    """Mean KL(p_T ‖ p_S) at temperature T (nats, no T² factor): the quantity KD minimises."""
    log_t = F.log_softmax(teacher.double() / temperature, dim=1)
    log_s = F.log_softmax(student.double() / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean().item()


def pearson(a: Tensor, b: Tensor, dim: int | None = None) -> Tensor:
    """Pearson correlation over all entries (dim=None) or along `dim` (e.g. over classes, per sample)."""
    a, b = a.double(), b.double()
    if dim is None:
        a, b, dim = a.flatten(), b.flatten(), 0
    a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / ((a * a).sum(dim) * (b * b).sum(dim)).sqrt()


@ANALYSES.register()
@writes(agreement="fraction of samples on which teacher and student predict the same class",
        kl_teacher_student="mean KL(teacher ‖ student) at the run's temperature (nats, no T²)",
        logit_corr="Pearson correlation of teacher and student logits, all entries",
        logit_corr_sample="mean over samples of the correlation of teacher and student logits")
def teacher_student(run: RunOutputs) -> list[dict]:
    """Top-1 agreement, KL(teacher ‖ student) at the run's T, logit correlation (all entries; per sample, mean)."""
    if run.teacher_logits is None:
        return []
    t, s, temp = run.teacher_logits, run.logits, run.config.temperature
    return [row("agreement", agreement(t, s)), row("kl_teacher_student", kl_divergence(t, s, temp), temperature=temp),
            row("logit_corr", pearson(t, s)), row("logit_corr_sample", pearson(t, s, dim=1).mean())]
