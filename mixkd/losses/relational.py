"""Relational distillation: methods that match how the batch's samples relate to each other in the student's
features to how they do in the teacher's — similarities (SP), correlations (CC), distances and angles (RKD),
probability densities (PKT). They depend on the batch's composition (PKT also on its size: its reference
weight belongs to batch 64), so common random numbers, not only seeds, keep their comparisons paired.
"""

from __future__ import annotations

from torch import Tensor

from . import functional as fl
from .base import LOSSES, BuildContext, FeatureLoss, LossInputs, Shapes, non_negative, positive
from .parts import Embed


@LOSSES.register("sp")
class SP(FeatureLoss):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): the row-normalised B × B similarity matrices of the last
    stage map. β 3000."""

    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    taps = frozenset({"maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 3000.0):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        self.beta = beta

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"sp": self.beta * fl.sp_loss(inp.student.maps[-1], inp.teacher.maps[-1])}


@LOSSES.register("cc")
class CC(FeatureLoss):
    """Correlation congruence (Peng et al., ICCV 2019) as RepDistiller ships it: linear embeddings (both trained)
    of the pooled features, the product of consecutive samples' embedding gaps. β 0.02, 128-d."""

    paper = "Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 0.02, dim: int = 128):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        positive(dim=dim)
        self.beta, self.dim = beta, dim

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        self.embed_student = Embed(student.pooled, self.dim, normalise=False)
        self.embed_teacher = Embed(teacher.pooled, self.dim, normalise=False)

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        s, t = self.embed_student(inp.student.pooled), self.embed_teacher(inp.teacher.pooled)
        return {"cc": self.beta * fl.cc_loss(s, t)}


@LOSSES.register("rkd")
class RKD(FeatureLoss):
    """Relational KD (Park et al., CVPR 2019): Huber losses between the pooled features' normalised pairwise
    distances (weight 25) and triplet angles (weight 50). β 1."""

    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 1.0, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta, distance_weight=distance_weight, angle_weight=angle_weight)
        self.beta, self.distance_weight, self.angle_weight = beta, distance_weight, angle_weight

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        loss = fl.rkd_loss(inp.student.pooled, inp.teacher.pooled, self.distance_weight, self.angle_weight)
        return {"rkd": self.beta * loss}


@LOSSES.register("pkt")
class PKT(FeatureLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): KL between the pooled features' cosine-kernel
    conditional probabilities. β 30,000 (for batch 64: the loss scales as ~1/B)."""

    paper = "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018"

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 30000.0):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        self.beta = beta

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"pkt": self.beta * fl.pkt_loss(inp.student.pooled, inp.teacher.pooled)}


