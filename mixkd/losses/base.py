"""What every distillation loss shares: the registry, the inputs of a step, and the contract of a method with
feature inputs or trainable parts.

Every loss returns a dict of *weighted* named parts (their sum is what is optimised), so each part is logged on
its own. A loss also says how teacher logits become the target distribution (`teacher_probs`): the `student`
mixed view interpolates those probabilities across partners, which is only meaningful after the loss's own
temperature and normalisation.

A `FeatureLoss` (mdistiller's `Distiller`, made a component of any grid) declares what it needs of a forward
(`taps`: the stem, stage maps, pre-activations; sample indices), which mixed views it is defined for, and
builds its trainable parts from the student's and teacher's feature shapes (a probe). The training loop gives
it exactly that: a teacher forward computes features only when some run of the group needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VIEW_ORDER
from ..mixing import MixResult
from ..models.base import Features
from ..registry import Registry

# A loss: a class built with the run's distillation temperature (an axis of its own) and its parameters.
LOSSES: Registry = Registry("loss", inputs=("temperature",))


@dataclass
class LossInputs:
    student_logits: Tensor
    targets: Tensor  # (B, K) label distribution of what the student saw
    teacher_probs: Tensor | None  # (B, K) from `teacher_probs`, after the view's interpolation; None without KD
    mix: MixResult  # y_a, y_b, λ for losses that need the target classes
    epoch: int  # 1-based, for warm-ups (a method's own pre-training epochs not counted)
    student: Features | None = None  # a FeatureLoss's: the student's features of what it saw
    teacher: Features | None = None  # ... the teacher's, blended as the inputs were in the `student` view
    index: Tensor | None = None  # (B,) dataset indices of the batch's samples, for the methods that ask


def non_negative(**weights: float) -> None:
    """A negative weight would ascend its loss part: refused where a study names it."""
    for name, value in weights.items():
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value!r}")


def positive(**values: float) -> None:
    """Sizes, temperatures and variances a method divides by or builds from: zero would break it mid-run."""
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against a distribution; equals F.cross_entropy for one-hot targets."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kd_kl(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """Hinton et al.: KL(p_T ‖ softmax(z_s / T)) · T², averaged over the batch.

    The T² keeps gradient magnitudes comparable across temperatures (soft-target gradients scale as 1/T²).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p_s, teacher_probs, reduction="batchmean") * temperature**2


@dataclass(frozen=True)
class Shapes:
    """One model's feature shapes, as a method builds its parts from them: (C, H, W) per map, D of pooled."""

    maps: tuple[tuple[int, ...], ...]
    pooled: int
    stem: tuple[int, ...] | None = None
    preact: tuple[tuple[int, ...], ...] | None = None


@torch.no_grad()
def probe(model: nn.Module, image: tuple[int, int, int], taps: frozenset[str],
          device: torch.device | str = "cpu") -> Shapes:
    """`model`'s feature shapes for `taps`, from a forward of two blank images in eval mode (no statistic moves;
    the model's mode is restored): exact for any architecture, and cheap."""
    training = model.training
    model.eval()
    try:
        _, f = model(torch.zeros(2, *image, device=device), return_features=True, taps=taps)
    finally:
        model.train(training)

    def shapes(maps):
        return None if maps is None else tuple(tuple(m.shape[1:]) for m in maps)

    return Shapes(shapes(f.maps if f.maps is not None else f.stages), f.pooled.shape[1],
                  None if f.stem is None else tuple(f.stem.shape[1:]), shapes(f.preact))


@dataclass
class BuildContext:
    """What a method may build its parts from besides the two models' shapes."""

    student: nn.Module  # the student (AB and FSP pre-train its feature modules)
    teacher: nn.Module  # the frozen teacher (OFD reads its BatchNorm affine parameters)
    num_data: int  # training images (CRD's memory holds one embedding per image)
    train_targets: Tensor | None = None  # (num_data,) labels of the training images, where the dataset has them
    seed: int = 0  # the run's seed, for a method's own random draws (CRD's negatives)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class FeatureLoss(nn.Module):
    """A distillation method with feature inputs and/or trainable parts (connectors, embeddings, memory).

    Its parts are built once (`build`) from the student's and teacher's shapes, train with the student's
    optimizer, are saved in the run's checkpoint, and never enter the student's exported weights. The loss
    always includes `ce_weight`·CE on the labels of what the student saw, and (`kd_weight` > 0) Hinton's KD at
    the run's temperature, so `crd` with kd_weight 1 is RepDistiller's CRD+KD.
    """

    uses_teacher = True
    taps: frozenset[str] = frozenset()  # of models.base.TAPS, on both models
    views: tuple[str, ...] = VIEW_ORDER  # the mixed views the method is defined for
    needs_index = False  # the batch's dataset indices
    paper = ""  # the method's paper, for `mixkd list losses`

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0):
        super().__init__()
        non_negative(ce_weight=ce_weight, kd_weight=kd_weight)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    @property
    def init_epochs(self) -> int:
        """Epochs of the method's own pre-training stage before the run's (FSP, AB, FT): none by default."""
        return 0

    def check(self, student: Shapes, teacher: Shapes) -> None:
        """Raise ValueError if the method cannot pair these models (called when a study is read, on shapes from
        the meta device, and again when the parts are built): feature maps where it distils maps."""
        for name in ("maps", "preact", "stem"):
            if name in self.taps:
                for which, shapes in (("student", student), ("teacher", teacher)):
                    found = getattr(shapes, name)
                    maps = [found] if name == "stem" else found
                    if any(m is None or len(m) != 3 for m in maps):
                        raise ValueError(f"it distils feature maps, and the {which}'s {name} are not (C, H, W) maps")

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        """Create the trainable parts; methods without any have nothing to do."""

    def teacher_probs(self, teacher_logits: Tensor) -> Tensor:
        return F.softmax(teacher_logits / self.temperature, dim=1)

    def base(self, inp: LossInputs) -> dict[str, Tensor]:
        """The label and (optional) logit-distillation parts every method adds its own to."""
        parts = {"ce": self.ce_weight * soft_cross_entropy(inp.student_logits, inp.targets)}
        if self.kd_weight:
            parts["kd"] = self.kd_weight * kd_kl(inp.student_logits, inp.teacher_probs, self.temperature)
        return parts

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, inp: LossInputs) -> dict[str, Tensor]:
        return {**self.base(inp), **self.distill(inp)}

    def main_parameters(self) -> list[nn.Parameter]:
        """The parts the run's optimizer trains with the student: all of them, unless a part trains only in the
        pre-training stage."""
        return list(self.parameters())

    # ---- a pre-training stage (FSP, AB, FT); none unless `init_epochs` > 0 ----------------------------------

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """What the pre-training stage trains."""
        raise NotImplementedError

    def init_lr(self, lr: float, student: nn.Module) -> float:
        """The pre-training stage's (constant) learning rate, given the run's."""
        return lr

    def init_loss(self, inp: LossInputs) -> dict[str, Tensor]:
        """The pre-training stage's loss parts."""
        raise NotImplementedError
