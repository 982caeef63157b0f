"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020; RepDistiller's `crd/`).

Each training image has a memory of its student and teacher embeddings; a step scores each sample's embedding
against the other side's memory of itself (the positive) and of `negatives` images of other classes, by
noise-contrastive estimation, then moves the memories toward the new embeddings. The memory is keyed by image,
so CRD is defined where each sample is one image: without mixing, or in the view `both` (a mixed sample stands
for its base image, in both memories). In `student` and `teacher` views one side would be another image's.

Negatives are drawn on the device from the run's own generator (the reference draws them in DataLoader workers
with NumPy): distinct images of other classes, uniformly, as the reference's `np.random.choice(..., replace=
False)`. The generator's state is part of the loss's state dict, so a resumed run draws what it would have.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as fl
from .base import LOSSES, BuildContext, FeatureLoss, LossInputs, Shapes, non_negative, positive
from .parts import ContrastMemory, Embed


@LOSSES.register("crd")
class CRD(FeatureLoss):
    """Contrastive representation distillation: β 0.8, 16,384 negatives, 128-d embeddings, NCE temperature 0.07,
    memory momentum 0.5 (CRD+KD: kd_weight 1)."""

    paper = "Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020"
    views = ("none", "both")
    needs_index = True

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 0.8, negatives: int = 16384, dim: int = 128, nce_temperature: float = 0.07,
                 momentum: float = 0.5):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        positive(negatives=negatives, dim=dim, nce_temperature=nce_temperature)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.beta, self.negatives, self.dim = beta, negatives, dim
        self.nce_temperature, self.momentum = nce_temperature, momentum

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        if context.train_targets is None:
            raise ValueError("crd needs the labels of every training image; this dataset does not hold them")
        self.embed_student = Embed(student.pooled, self.dim)
        self.embed_teacher = Embed(teacher.pooled, self.dim)
        self.memory = ContrastMemory(self.dim, context.num_data, self.nce_temperature, self.momentum)
        self.register_buffer("targets", context.train_targets.to(torch.long).clone(), persistent=False)
        self.available = int(len(self.targets) - torch.bincount(self.targets).max())  # the fewest other-class images
        self.generator = torch.Generator(device=context.device)
        self.generator.manual_seed(context.seed)

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"])

    def contrast(self, index: Tensor) -> Tensor:
        """(B, 1 + K): each sample's own image, then K distinct images of other classes (with replacement only
        where fewer than K exist, as the reference)."""
        other = self.targets[None, :] != self.targets[index][:, None]  # (B, N)
        if self.negatives <= self.available:
            scores = torch.rand(other.shape, device=index.device, generator=self.generator).masked_fill(~other, -1)
            drawn = scores.topk(self.negatives, dim=1).indices
        else:
            drawn = torch.multinomial(other.float(), self.negatives, replacement=True, generator=self.generator)
        return torch.cat([index[:, None], drawn], dim=1)

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        s, t = self.embed_student(inp.student.pooled), self.embed_teacher(inp.teacher.pooled)
        out_s, out_t = self.memory.scores(s, t, self.contrast(inp.index))
        loss = fl.nce_loss(out_s, self.memory.num_data) + fl.nce_loss(out_t, self.memory.num_data)
        if self.training:
            self.memory.update(inp.index, s.detach(), t.detach())
        return {"crd": self.beta * loss}
