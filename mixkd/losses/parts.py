"""The trainable parts of distillation methods that are not the student: regressors, connectors, embeddings, the
translator and paraphraser of FT, ReviewKD's attention-based fusion, CRD's memory bank.

Each is built from the student's and teacher's feature shapes (found by a probe on the meta device), the way its
reference builds it (RepDistiller `models/util.py`, `crd/memory.py`; mdistiller `distillers/{OFD,ReviewKD}.py`),
so a method's parameter count and initial function match the papers' numbers. They train with the student's
optimizer and live in the run's checkpoint, never in the student's exported weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import vid_initial_log_scale


class ConvReg(nn.Module):
    """FitNet's regressor from a student map to a teacher map's shape (RepDistiller's ConvReg): a stride-2 3×3 conv
    when the student map is twice the size, a transposed 4×4 conv when half, else a conv whose kernel absorbs the
    size difference (1×1 for equal sizes); then BatchNorm and, for FitNet, a ReLU."""

    def __init__(self, student: tuple[int, ...], teacher: tuple[int, ...], relu: bool = True):
        super().__init__()
        (_, c_s, h_s, w_s), (_, c_t, h_t, w_t) = student, teacher
        if h_s == 2 * h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
        elif h_s >= h_t:
            self.conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"no regressor from a {h_s}×{w_s} student map to a {h_t}×{w_t} teacher map")
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class VIDRegressor(nn.Module):
    """VID's mean predictor (three bias-free 1×1 convs, ReLU between, mid width = teacher channels) and its
    per-channel log-variance α, initialised so the variance starts at 5 (RepDistiller learns α)."""

    def __init__(self, student_channels: int, teacher_channels: int, initial_variance: float = 5.0):
        super().__init__()
        c = teacher_channels
        self.mean = nn.Sequential(nn.Conv2d(student_channels, c, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(c, c, 1, bias=False), nn.ReLU(), nn.Conv2d(c, c, 1, bias=False))
        self.log_scale = nn.Parameter(torch.full((c,), vid_initial_log_scale(initial_variance)))

    def forward(self, x: Tensor) -> Tensor:
        return self.mean(x)


class Embed(nn.Module):
    """A linear map of pooled features to an embedding, L2-normalised for CRD (without an epsilon, as the
    reference: a zero embedding is NaN), left raw for CC."""

    def __init__(self, dim_in: int, dim_out: int = 128, normalise: bool = True):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.normalise = normalise

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt() if self.normalise else x


def _conv_stack(channels: list[int], transpose: bool = False, bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1), *([nn.BatchNorm2d(c_out)] if bn else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's teacher-side auto-encoder: 3×3 convs C → C → ⌊kC⌋ → ⌊kC⌋ (the factor) and transposed convs
    back, leaky ReLUs (0.1), no BatchNorm; trained first to reconstruct the teacher's map, then frozen."""

    def __init__(self, teacher_channels: int, rate: float = 0.5):
        super().__init__()
        c, f = teacher_channels, int(teacher_channels * rate)
        self.encoder = _conv_stack([c, c, f, f])
        self.decoder = _conv_stack([f, f, c, c], transpose=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's student-side encoder to the paraphraser's factor size: 3×3 convs C_s → C_s → ⌊kC_t⌋ → ⌊kC_t⌋,
    each with BatchNorm and a leaky ReLU."""

    def __init__(self, student_channels: int, teacher_channels: int, rate: float = 0.5):
        super().__init__()
        f = int(teacher_channels * rate)
        self.encoder = _conv_stack([student_channels, student_channels, f, f], bn=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class OFDConnector(nn.Sequential):
    """OFD's student-to-teacher connector: a bias-free conv (He-normal init over its output fan) and BatchNorm
    (γ = 1, β = 0)."""

    def __init__(self, student_channels: int, teacher_channels: int, kernel_size: int = 1):
        conv = nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
        bn = nn.BatchNorm2d(teacher_channels)
        super().__init__(conv, bn)


class ABF(nn.Module):
    """ReviewKD's attention-based fusion of one level: a 1×1 conv to the mid width; below the deepest level, a
    per-pixel two-way attention between it and the (upsampled) residual from the level below; a 3×3 conv to the
    teacher's channels at the teacher's size. Returns (output, residual for the next level)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, size: int, out_size: int) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.attention is not None:
            residual = F.interpolate(residual, (size, size), mode="nearest")
            w = self.attention(torch.cat([x, residual], dim=1))
            x = x * w[:, :1] + residual * w[:, 1:]
        y = F.interpolate(x, (out_size, out_size), mode="nearest") if x.shape[-1] != out_size else x
        return self.conv2(y), x


class ReviewFusion(nn.Module):
    """ReviewKD's student side: the student's levels (stage maps and the pooled vector as a 1×1 map, shallow to
    deep) fused deep to shallow by one ABF each, mid width min(512, deepest channels), each output at the
    teacher's size of that level."""

    def __init__(self, student: list[tuple[int, ...]], teacher: list[tuple[int, ...]]):
        super().__init__()
        mid = min(512, student[-1][1])
        self.sizes = [s[-1] for s in student][::-1]
        self.out_sizes = [t[-1] for t in teacher][::-1]
        self.abfs = nn.ModuleList([ABF(s[1], mid, t[1], fuse=i > 0)
                                   for i, (s, t) in enumerate(zip(student[::-1], teacher[::-1]))])

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        outputs, residual = [], None
        for x, abf, size, out_size in zip(levels[::-1], self.abfs, self.sizes, self.out_sizes):
            y, residual = abf(x, residual, size, out_size)
            outputs.insert(0, y)
        return outputs


class ContrastMemory(nn.Module):
    """CRD's memory bank: a unit-norm embedding per training image for each side (student, teacher), the
    normalising constants Z of the NCE scores, fixed from the first batch, and their momentum updates. State, not
    parameters: buffers that the checkpoint saves and a resumed run restores. Device-agnostic, and without reading
    a value back to the host (the first-batch test is a `torch.where`)."""

    def __init__(self, dim: int, num_data: int, temperature: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.num_data, self.temperature, self.momentum = num_data, temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student_bank", torch.rand(num_data, dim) * 2 * bound - bound)
        self.register_buffer("teacher_bank", torch.rand(num_data, dim) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: not yet set

    def scores(self, student: Tensor, teacher: Tensor, contrast: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised scores (B, 1 + K) of each anchor against the other side's bank at `contrast` (column 0: the
        positive): the student embedding against teacher memories, the teacher's against student memories."""
        def exp_scores(bank: Tensor, anchor: Tensor) -> Tensor:
            rows = bank[contrast].detach()  # (B, 1 + K, dim)
            return torch.exp(torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2) / self.temperature)

        out_s, out_t = exp_scores(self.teacher_bank, student), exp_scores(self.student_bank, teacher)
        with torch.no_grad():
            first = torch.stack([out_s.mean(), out_t.mean()]) * self.num_data
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        return out_s / self.z[0], out_t / self.z[1]

    @torch.no_grad()
    def update(self, index: Tensor, student: Tensor, teacher: Tensor) -> None:
        """Move each image's memories toward its new embeddings (momentum), back onto the unit sphere."""
        for bank, embedding in ((self.student_bank, student), (self.teacher_bank, teacher)):
            moved = bank[index] * self.momentum + embedding * (1 - self.momentum)
            bank.index_copy_(0, index, moved / moved.pow(2).sum(dim=1, keepdim=True).sqrt())
