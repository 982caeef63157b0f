"""The Distiller that turns a batch into named losses, whoever sees the mixed images (`config.VIEWS`).

Follows mdistiller's contract: the teacher is always in eval mode, never updated, and
`forward_train` returns the student's logits and a dict of named (weighted) loss parts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VIEWS, View
from .losses import FeatureLoss, LossInputs
from .mixing import MixResult, identity, smooth_one_hot
from .models.base import Features


class TeacherForward:
    """The teacher's outputs on one batch, clean and mixed, each computed at most once (without gradients):
    every run of a lockstep group reads the same ones. With `taps` (what the group's feature methods need,
    `models.base.TAPS`) the forward also returns the teacher's Features."""

    def __init__(self, teacher: nn.Module, x: Tensor, mix: MixResult, taps: frozenset[str] | None = None):
        self.teacher, self.x, self.mix, self.taps = teacher, x, mix, taps
        self._out: dict[bool, tuple[Tensor, Features | None]] = {}

    def _forward(self, mixed: bool) -> tuple[Tensor, Features | None]:
        if mixed not in self._out:
            with torch.no_grad():
                if mixed:
                    out = self.mix.forward(self.teacher, self.x, self.taps)
                else:
                    out = self.teacher(self.x, **({} if self.taps is None else
                                                  {"return_features": True, "taps": self.taps}))
            logits, features = (out, None) if self.taps is None else out
            # fp32 copies the cache owns: a CUDA-graphed teacher (compile: reduce-overhead) writes its next
            # call's outputs into the same memory, and `.float()` of fp32 outputs would be that memory
            self._out[mixed] = (logits.to(torch.float32, copy=True),
                                None if features is None else in_fp32(features, copy=True))
        return self._out[mixed]

    def logits(self, mixed: bool) -> Tensor:
        return self._forward(mixed)[0]

    def features(self, mixed: bool) -> Features:
        return self._forward(mixed)[1]


def in_fp32(f: Features, copy: bool = False) -> Features:
    """Features as the losses compute with them: fp32 whatever the autocast precision."""
    def cast(t):
        return None if t is None else t.to(torch.float32, copy=copy)

    def cast_all(ts):
        return None if ts is None else [cast(t) for t in ts]

    return Features(cast_all(f.stages), cast(f.pooled), cast(f.stem), cast_all(f.maps), cast_all(f.preact))


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

    @property
    def taps(self) -> frozenset[str] | None:
        """What the method reads of a forward beyond logits (None: logits alone)."""
        return self.loss.taps if isinstance(self.loss, FeatureLoss) else None

    def forward_train(self, x: Tensor, y: Tensor, mix: MixResult, epoch: int,
                      teacher_out: "TeacherForward | None" = None, index: Tensor | None = None,
                      pretraining: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """`teacher_out` lets runs trained in lockstep share one teacher forward per batch; alone, the
        distiller makes its own. `pretraining`: a method's own pre-training stage (`FeatureLoss.init_epochs`),
        on the clean batch."""
        v, taps = self.view, self.taps
        if pretraining:
            v, mix = VIEWS["none"], identity(x, y)
        if v.student_mixed:
            out, mix = mix.forward_student(self.student, x, taps)  # TransMix relabels from the student's attention
        else:
            out = self.student(x) if taps is None else self.student(x, return_features=True, taps=taps)
        return self.losses(out, x, y, mix, epoch, teacher_out, index, pretraining)

    def losses(self, out, x: Tensor, y: Tensor, mix: MixResult, epoch: int,
               teacher_out: "TeacherForward | None" = None, index: Tensor | None = None,
               pretraining: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss parts of the student's output `out` (logits, or with taps `(logits, Features)`) on what its
        view shows it of the batch `x` mixed by `mix`: apart from the forward, so that fused lockstep
        (`mixkd.fuse`) can run many students' forwards as one."""
        loss, v, taps = self.loss, VIEWS["none"] if pretraining else self.view, self.taps
        if v.student_mixed:
            targets = mix.soft_targets(self.num_classes, self.label_smoothing)
        else:
            targets = smooth_one_hot(y, self.num_classes, self.label_smoothing)
        logits, student = (out, None) if taps is None else (out[0], in_fp32(out[1]))
        logits = logits.float()  # losses in fp32 whatever the autocast precision
        teacher_probs = teacher = None
        if self.teacher is not None and loss.uses_teacher:
            teacher_out = teacher_out or TeacherForward(self.teacher, x, mix, taps)
            teacher_probs = loss.teacher_probs(teacher_out.logits(v.teacher_mixed))
            if taps is not None:
                teacher = teacher_out.features(v.teacher_mixed)
            if v.interpolate_teacher:
                teacher_probs = mix.interpolate(teacher_probs)
                teacher = teacher if teacher is None else mix.blend_features(teacher)
        inp = LossInputs(logits, targets, teacher_probs, mix, epoch, student, teacher, index)
        return logits, (loss.init_loss(inp) if pretraining else loss(inp))

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)
