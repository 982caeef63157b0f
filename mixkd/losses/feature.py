"""Feature distillation: methods that match the student's intermediate maps to the teacher's — hints (FitNet),
attention (AT), kernel statistics (NST), mutual information (VID), singular vectors (KDSVD), pre-activations
(OFD), multi-level review (ReviewKD), factors (FT) and, with a pre-training stage of their own, activation
boundaries (AB) and flows (FSP).

Defaults are the references' CIFAR-100 settings (RepDistiller's `scripts/run_cifar_distill.sh`, mdistiller's
`configs/cifar100`): CE 1 + β·loss, no KD term unless `kd_weight` is set. Maps follow the references' indexing
(`models.base.Features`: `stem` is their F0, `maps` their F1, F2, ...); lists of maps are paired from the first
(RepDistiller zips them) unless a method says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.base import Features
from . import functional as fl
from .base import LOSSES, BuildContext, FeatureLoss, LossInputs, Shapes, non_negative, positive
from .parts import ConvReg, OFDConnector, Paraphraser, ReviewFusion, Translator, VIDRegressor


def _batched(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape)


@LOSSES.register("fitnet")
class FitNet(FeatureLoss):
    """FitNets (Romero et al., ICLR 2015): a regressor maps the student's hint map (F2 by default: the second
    stage) to the teacher's, trained by MSE. β 100 (RepDistiller, mdistiller)."""

    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    taps = frozenset({"stem", "maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 100.0, hint_layer: int = 2):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta, hint_layer=hint_layer)
        self.beta, self.hint_layer = beta, hint_layer

    def hint(self, f: Features | Shapes):
        return f.stem if self.hint_layer == 0 else f.maps[self.hint_layer - 1]

    def check(self, student: Shapes, teacher: Shapes) -> None:
        super().check(student, teacher)
        if self.hint_layer > min(len(student.maps), len(teacher.maps)):
            raise ValueError(f"hint_layer {self.hint_layer} is past the last map ({len(student.maps)} in the student, "
                             f"{len(teacher.maps)} in the teacher; 0 is the stem)")
        with torch.device("meta"):
            ConvReg(_batched(self.hint(student)), _batched(self.hint(teacher)))

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        self.regressor = ConvReg(_batched(self.hint(student)), _batched(self.hint(teacher)))

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        s, t = self.regressor(self.hint(inp.student)), self.hint(inp.teacher)
        return {"fitnet": self.beta * (s - t).pow(2).mean()}


@LOSSES.register("at")
class AT(FeatureLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): L2-normalised spatial attention (channel mean of
    squared activations) of every stage map. β 1000."""

    paper = "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017"
    taps = frozenset({"maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 1000.0, p: float = 2.0):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        positive(p=p)
        self.beta, self.p = beta, p

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"at": self.beta * fl.at_loss(inp.student.maps, inp.teacher.maps, self.p)}


@LOSSES.register("nst")
class NST(FeatureLoss):
    """Neuron selectivity transfer (Huang & Wang, 2017): the polynomial-kernel MMD between the channels of every
    stage map. β 50."""

    paper = "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, arXiv 2017"
    taps = frozenset({"maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 50.0):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        self.beta = beta

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        return {"nst": self.beta * fl.nst_loss(inp.student.maps, inp.teacher.maps)}


@LOSSES.register("vid")
class VID(FeatureLoss):
    """Variational information distillation (Ahn et al., CVPR 2019): per stage, a regressor predicts the teacher's
    map as a Gaussian mean with a learned per-channel variance (starting at 5), trained by its negative
    log-likelihood. β 1; the variance is learned (RepDistiller; mdistiller's is never registered)."""

    paper = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"
    taps = frozenset({"maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 1.0, initial_variance: float = 5.0):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        positive(initial_variance=initial_variance)
        self.beta, self.initial_variance = beta, initial_variance

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        self.regressors = nn.ModuleList([VIDRegressor(s[0], t[0], self.initial_variance)
                                         for s, t in zip(student.maps, teacher.maps)])

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        total = 0.0
        for reg, s, t in zip(self.regressors, inp.student.maps, inp.teacher.maps):
            s, t = fl.matched(s, t)
            total = total + fl.vid_loss(reg(s), t, reg.log_scale)
        return {"vid": self.beta * total}


@LOSSES.register("kdsvd")
class KDSVD(FeatureLoss):
    """SVD-based self-supervised KD (Lee et al., ECCV 2018): RBF kernels between consecutive stages' leading
    singular vectors. β 1, k 1; `layout` ch_w (mdistiller's, any channel counts) or hw_c (RepDistiller's)."""

    paper = "Lee et al., Self-supervised Knowledge Distillation Using Singular Value Decomposition, ECCV 2018"
    taps = frozenset({"maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 1.0, k: int = 1, layout: str = "ch_w"):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        positive(k=k)
        if layout not in ("ch_w", "hw_c"):
            raise ValueError(f"layout must be ch_w or hw_c, got {layout!r}")
        self.beta, self.k, self.layout = beta, k, layout

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        loss = fl.kdsvd_loss(inp.student.maps, inp.teacher.maps, self.k, self.layout)
        return {"kdsvd": self.beta * loss}


@LOSSES.register("ofd")
class OFD(FeatureLoss):
    """A comprehensive overhaul of feature distillation (Heo et al., ICCV 2019; mdistiller's OFD): connectors
    (conv + BN) map the student's pre-activations to the teacher's, a partial L2 ignores what both leave
    inactive below a margin read from the teacher's BatchNorm; stage i of K weighted 2^(i−K+1). β 0.001. The
    teacher stays in eval mode (mdistiller's leaves it training: a deliberate difference)."""

    paper = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    taps = frozenset({"preact"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 0.001, kernel_size: int = 1):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta)
        positive(kernel_size=kernel_size)
        self.beta, self.kernel_size = beta, kernel_size

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        n = min(len(student.preact), len(teacher.preact))  # the last n of each: mdistiller's alignment
        self.n = n
        self.connectors = nn.ModuleList([OFDConnector(s[0], t[0], self.kernel_size)
                                         for s, t in zip(student.preact[-n:], teacher.preact[-n:])])
        bns = context.teacher.bn_before_relu()[-n:]
        for i, bn in enumerate(bns):
            self.register_buffer(f"margin{i}", fl.ofd_margin(bn.weight.detach(), bn.bias.detach()))

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        total = 0.0
        for i, (conn, s, t) in enumerate(zip(self.connectors, inp.student.preact[-self.n:],
                                             inp.teacher.preact[-self.n:])):
            s = conn(s)
            t = F.adaptive_avg_pool2d(t, s.shape[-2:]).detach()
            total = total + fl.ofd_loss(s, t, getattr(self, f"margin{i}")) / 2 ** (self.n - i - 1)
        return {"ofd": self.beta * total}


def _levels(maps: list[Tensor], pooled: Tensor) -> list[Tensor]:
    return [*maps, pooled[:, :, None, None]]


@LOSSES.register("reviewkd")
class ReviewKD(FeatureLoss):
    """Knowledge review (Chen et al., CVPR 2021; mdistiller's ReviewKD): the student's stage maps and pooled
    vector, fused deep to shallow by attention-based fusion, matched to the teacher's pre-activations and pooled
    vector by the hierarchical context loss, weighted min(epoch / warmup, 1)·β. β 1 (mdistiller's default; its
    resnet32x4→resnet8x4 config and the original's wrn and 8x4 students use 5, resnet20 0.6)."""

    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"
    taps = frozenset({"maps", "preact"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 1.0, warmup: int = 20):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta, warmup=warmup)
        self.beta, self.warmup = beta, warmup

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        n = min(len(student.maps), len(teacher.preact))
        self.n = n
        self.fusion = ReviewFusion([_batched(s) for s in student.maps[-n:]] + [(1, student.pooled, 1, 1)],
                                   [_batched(t) for t in teacher.preact[-n:]] + [(1, teacher.pooled, 1, 1)])

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        s = self.fusion(_levels(inp.student.maps[-self.n:], inp.student.pooled))
        t = _levels(inp.teacher.preact[-self.n:], inp.teacher.pooled)
        scale = min(inp.epoch / self.warmup, 1.0) if self.warmup else 1.0
        return {"reviewkd": scale * self.beta * fl.hcl_loss(s, t)}


@LOSSES.register("ft")
class FT(FeatureLoss):
    """Factor transfer (Kim et al., NeurIPS 2018; RepDistiller's FT): a paraphraser auto-encodes the teacher's last
    map (pre-trained for `init_epochs`, then frozen), a translator encodes the student's to the same factor
    size, matched by the L1 distance of their attention-style factors. β 200, rate 0.5, 30 pre-training epochs at
    lr 0.01 for CIFAR ResNet/WRN students (else the run's lr)."""

    paper = "Kim et al., Paraphrasing Complex Network: Network Compression via Factor Transfer, NeurIPS 2018"
    taps = frozenset({"maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 beta: float = 200.0, rate: float = 0.5, init_epochs: int = 30):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(beta=beta, init_epochs=init_epochs)
        positive(rate=rate)
        self.beta, self.rate, self._init_epochs = beta, rate, init_epochs

    @property
    def init_epochs(self) -> int:
        return self._init_epochs

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        self.paraphraser = Paraphraser(teacher.maps[-1][0], self.rate)  # trained in its own stage only
        self.translator = Translator(student.maps[-1][0], teacher.maps[-1][0], self.rate)

    def main_parameters(self) -> list[nn.Parameter]:
        return list(self.translator.parameters())

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        with torch.no_grad():  # the frozen paraphraser's factor of the (frozen) teacher's map
            t = self.paraphraser.eval().encoder(inp.teacher.maps[-1])
        s, t = fl.matched(self.translator(inp.student.maps[-1]), t)
        return {"ft": self.beta * fl.ft_loss(fl.ft_factor(s), fl.ft_factor(t))}

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        return list(self.paraphraser.parameters())

    def init_lr(self, lr: float, student: nn.Module) -> float:
        return 0.01 if type(student).__name__ in ("CifarResNet", "WideResNet") else lr

    def init_loss(self, inp: LossInputs) -> dict[str, Tensor]:
        t = inp.teacher.maps[-1]
        _, rebuilt = self.paraphraser(t)
        return {"paraphraser": (rebuilt - t).pow(2).mean()}


class _PretrainedOnly(FeatureLoss):
    """AB and FSP as RepDistiller runs them: their loss pre-trains the student for `init_epochs`, after which the
    run trains on the labels (and `kd_weight`'s KD) alone — its main-stage loss is zero."""

    def __init__(self, temperature: float, ce_weight: float, kd_weight: float, init_epochs: int):
        super().__init__(temperature, ce_weight, kd_weight)
        non_negative(init_epochs=init_epochs)
        self._init_epochs = init_epochs

    @property
    def init_epochs(self) -> int:
        return self._init_epochs

    def distill(self, inp: LossInputs) -> dict[str, Tensor]:
        return {}

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The student (what the loss reaches of it: its classifier gets no gradient and does not move) and the
        method's parts."""
        return [*student.parameters(), *self.parameters()]


@LOSSES.register("ab")
class AB(_PretrainedOnly):
    """Activation boundaries (Heo et al., AAAI 2019; RepDistiller's AB): for `init_epochs` (30) the student's
    pre-activations are pushed, through connectors (identity where shapes match), past the teacher's activation
    boundaries by a margin; then labels only."""

    paper = ("Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, "
             "AAAI 2019")
    taps = frozenset({"preact"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 margin: float = 1.0, init_epochs: int = 30):
        super().__init__(temperature, ce_weight, kd_weight, init_epochs)
        non_negative(margin=margin)
        self.margin = margin

    def build(self, student: Shapes, teacher: Shapes, context: BuildContext) -> None:
        self.connectors = nn.ModuleList([
            nn.Identity() if s[:2] == t[:2] else ConvReg(_batched(s), _batched(t), relu=False)
            for s, t in zip(student.preact, teacher.preact)])

    def init_loss(self, inp: LossInputs) -> dict[str, Tensor]:
        s = [c(p) for c, p in zip(self.connectors, inp.student.preact)]
        return {"ab": fl.ab_loss(s, inp.teacher.preact[:len(s)], self.margin)}


@LOSSES.register("fsp")
class FSP(_PretrainedOnly):
    """Flow of solution procedure (Yim et al., CVPR 2017; RepDistiller's FSP): for `init_epochs` (30) the student's
    Gram matrices between consecutive maps (stem included) are fitted to the teacher's; then labels only. Needs
    equal channel counts at every map (no connectors)."""

    paper = "Yim et al., A Gift from Knowledge Distillation, CVPR 2017"
    taps = frozenset({"stem", "maps"})

    def __init__(self, temperature: float = 4.0, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 init_epochs: int = 30):
        super().__init__(temperature, ce_weight, kd_weight, init_epochs)

    def check(self, student: Shapes, teacher: Shapes) -> None:
        super().check(student, teacher)
        s, t = [student.stem, *student.maps], [teacher.stem, *teacher.maps]
        if len(s) != len(t) or any(a[0] != b[0] for a, b in zip(s, t)):
            raise ValueError(f"it needs the student's and teacher's maps to have equal channels; got "
                             f"{[a[0] for a in s]} and {[b[0] for b in t]}")

    def init_loss(self, inp: LossInputs) -> dict[str, Tensor]:
        s, t = [inp.student.stem, *inp.student.maps], [inp.teacher.stem, *inp.teacher.maps]
        return {"fsp": fl.fsp_loss(s, t)}
