"""The Distiller that turns a batch into named losses, whoever sees the mixed images (`config.VIEWS`).

Follows mdistiller's contract: the teacher is always in eval mode, never updated, and
`forward_train` returns the student's logits and a dict of named (weighted) loss parts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import View
from .losses import LossInputs
from .mixing import MixResult, smooth_one_hot


class TeacherForward:
    """The teacher's logits on one batch, clean and mixed, each computed at most once (without gradients):
    every run of a lockstep group reads the same ones."""

    def __init__(self, teacher: nn.Module, x: Tensor, mix: MixResult):
        self.teacher, self.x, self.mix = teacher, x, mix
        self._logits: dict[bool, Tensor] = {}

    def logits(self, mixed: bool) -> Tensor:
        if mixed not in self._logits:
            with torch.no_grad():
                out = self.mix.forward(self.teacher, self.x) if mixed else self.teacher(self.x)
            # an fp32 copy the cache owns: a CUDA-graphed teacher (compile: reduce-overhead) writes its
            # next call's logits into the same memory, and `.float()` of fp32 logits would be that memory
            self._logits[mixed] = out.to(torch.float32, copy=True)
        return self._logits[mixed]


class Distiller(nn.Module):
    """Student (+ optional frozen teacher) → (logits, {part: loss}) for one batch."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, loss, view: View, num_classes: int,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.student, self.loss, self.view = student, loss, view
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        # Kept out of the module tree so `parameters()` / `state_dict()` are the student's alone.
        self._teacher = [teacher] if teacher is not None else []
        if getattr(loss, "uses_teacher", False) and teacher is None:
            raise ValueError("this loss needs a teacher")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BatchNorm statistics of the teacher never move
        return self

    def forward_train(self, x: Tensor, y: Tensor, mix: MixResult, epoch: int,
                      teacher_out: "TeacherForward | None" = None) -> tuple[Tensor, dict[str, Tensor]]:
        """`teacher_out` lets runs trained in lockstep share one teacher forward per batch; alone, the
        distiller makes its own."""
        v = self.view
        if v.student_mixed:
            logits, mix = mix.forward_student(self.student, x)  # TransMix relabels from the student's attention
            targets = mix.soft_targets(self.num_classes, self.label_smoothing)
        else:
            logits = self.student(x)
            targets = smooth_one_hot(y, self.num_classes, self.label_smoothing)
        logits = logits.float()  # losses in fp32 whatever the autocast precision
        teacher_probs = None
        if self.teacher is not None and self.loss.uses_teacher:
            teacher_out = teacher_out or TeacherForward(self.teacher, x, mix)
            teacher_probs = self.loss.teacher_probs(teacher_out.logits(v.teacher_mixed))
            if v.interpolate_teacher:
                teacher_probs = mix.interpolate(teacher_probs)
        return logits, self.loss(LossInputs(logits, targets, teacher_probs, mix, epoch))

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)
