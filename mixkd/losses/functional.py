"""The math of feature, relational and modern logit distillation, as pure functions of tensors.

Each function is one method's loss (or its core transform) exactly as its reference implementation computes
it — RepDistiller (HobbitLong/RepDistiller, `distiller_zoo/`), mdistiller (megvii-research/mdistiller,
`mdistiller/distillers/`), DIST (hunto/image_classification_sota, `lib/models/losses/dist_kd.py`) and logit
standardisation (sunshangquan/logit-standardization-KD) — reductions and constants included, so published
numbers stay comparable. The methods that own trainable parts, feature taps and mixed views build on these
(`mixkd.losses`); nothing here has state, so every formula is tested against hand-computed values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def pool_to(f: Tensor, size: int) -> Tensor:
    """A (B, C, H, W) map average-pooled to size × size when larger (references pool the larger of two maps)."""
    return F.adaptive_avg_pool2d(f, size) if f.shape[-1] > size else f


def matched(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Two maps pooled to the smaller one's (square) spatial size."""
    size = min(s.shape[-1], t.shape[-1])
    return pool_to(s, size), pool_to(t, size)


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis (ICLR 2017): the channel mean of |f|^p per position, L2-normalised per sample over
    the H·W positions: (B, H·W)."""
    return F.normalize(f.pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student: list[Tensor], teacher: list[Tensor], p: float = 2.0) -> Tensor:
    """AT: Σ over stages of the mean (over samples and positions) squared difference of attention maps."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        s, t = matched(s, t)
        total = total + (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
    return total


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """SP (Tung & Mori, ICCV 2019): the batch's B × B similarity (Gram) matrices, each row L2-normalised, compared
    by squared Frobenius distance over B²."""
    def gram(f: Tensor) -> Tensor:
        a = f.flatten(1)
        return F.normalize(a @ a.t(), dim=1)

    b = student.shape[0]
    return (gram(teacher) - gram(student)).pow(2).sum() / b**2


def cc_loss(student_embed: Tensor, teacher_embed: Tensor) -> Tensor:
    """CC as RepDistiller ships it (the code its authors shared, not the paper's kernel matrix): with
    Δ = |e_s − e_t|, the mean over consecutive samples i, i+1 of Σ_d Δ_i,d · Δ_i+1,d — it depends on the batch's
    order."""
    delta = (student_embed - teacher_embed).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).sum() / (delta.shape[0] - 1)


def vid_variance(log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """VID's per-channel variance σ² = softplus(α) + eps."""
    return F.softplus(log_scale) + eps


def vid_initial_log_scale(variance: float = 5.0, eps: float = 1e-5) -> float:
    """The α that makes σ² = `variance` at start (5.0 in both references)."""
    return math.log(math.exp(variance - eps) - 1.0)


def vid_loss(mean: Tensor, teacher: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """VID (Ahn et al., CVPR 2019): the Gaussian negative log-likelihood (constant dropped) of the teacher's map
    under the student's predicted mean and a learned per-channel variance, averaged over every element."""
    var = vid_variance(log_scale, eps).view(1, -1, 1, 1)
    return 0.5 * ((mean - teacher).pow(2) / var + var.log()).mean()


def _distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    sq = e.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _angles(e: Tensor) -> Tensor:
    u = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # u[i, j] = unit(e_j − e_i)
    return torch.bmm(u, u.transpose(1, 2)).flatten()  # u_ij · u_ik for every (i, j, k)


def rkd_loss(student: Tensor, teacher: Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> Tensor:
    """RKD (Park et al., CVPR 2019) on pooled features: Huber distance between the batches' pairwise distances,
    each normalised by its mean nonzero distance, and between their triplet angles."""
    def normalised(d: Tensor) -> Tensor:  # mean of the nonzero distances (d ≥ 0), without a host sync
        return d / (d.sum() / (d > 0).sum())

    with torch.no_grad():
        d_t = normalised(_distances(teacher))
        a_t = _angles(teacher)
    d_s = normalised(_distances(student))
    return distance_weight * F.smooth_l1_loss(d_s, d_t) + angle_weight * F.smooth_l1_loss(_angles(student), a_t)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT (Passalis & Tefas, ECCV 2018): cosine similarities mapped to [0, 1] and normalised per row into
    conditional probabilities; KL(teacher ‖ student) averaged over the B² entries (so it scales as ~1/B: its
    reference weight, 30,000, belongs to batch 64)."""
    def probabilities(f: Tensor) -> Tensor:
        f = torch.nan_to_num(f / (f.norm(dim=1, keepdim=True) + eps))
        s = (f @ f.t() + 1) / 2
        return s / s.sum(dim=1, keepdim=True)

    p_s, p_t = probabilities(student), probabilities(teacher)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def ab_loss(student: list[Tensor], teacher: list[Tensor], margin: float = 1.0) -> Tensor:
    """AB (Heo et al., AAAI 2019) on pre-activations: a hinge that pushes each student neuron to the teacher's side
    of the activation boundary by `margin`, summed over elements; stage k of K weighted 2^(k−K), the whole
    scaled by 3 / (1000·B) as RepDistiller does."""
    total, k_last = student[0].new_zeros(()), len(student) - 1
    for k, (s, t) in enumerate(zip(student, teacher)):
        off, on = (t <= 0).to(s.dtype), (t > 0).to(s.dtype)
        hinge = (s + margin).pow(2) * ((s > -margin).to(s.dtype) * off) + \
            (s - margin).pow(2) * ((s <= margin).to(s.dtype) * on)
        total = total + 2.0 ** (k - k_last) * hinge.sum()
    return total * 3 / (1000 * student[0].shape[0])


def ft_factor(f: Tensor, p: float = 2.0) -> Tensor:
    """FT's factor as RepDistiller computes it: the attention-style map of `attention_map`."""
    return attention_map(f, p)


def ft_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """FT (Kim et al., NeurIPS 2018): the mean absolute difference of the two factors (p = 1)."""
    return (student_factor - teacher_factor).abs().mean()


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """The 'flow' between two consecutive maps: G[n, j, i] = mean over positions of second_j · first_i, the larger
    map pooled to the smaller first."""
    first, second = matched(first, second)
    return torch.einsum("nihw,njhw->nji", first, second) / (first.shape[-1] * first.shape[-2])


def fsp_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """FSP (Yim et al., CVPR 2017): Σ over consecutive pairs of maps of the mean squared difference of flows."""
    total = student[0].new_zeros(())
    for k in range(len(student) - 1):
        total = total + (fsp_matrix(student[k], student[k + 1]) - fsp_matrix(teacher[k], teacher[k + 1])).pow(2).mean()
    return total


def nst_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """NST (Huang & Wang, 2017): the squared maximum mean discrepancy, with a polynomial kernel k(a, b) = (a·b)²,
    between the channels (each L2-normalised over positions) of the two maps. Computed through the channel Gram
    matrices, mean((A Bᵀ)²), which equals the reference's elementwise form without its B·C·C'·H·W buffer."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        s, t = matched(s, t)
        s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)

        def kernel(a: Tensor, b: Tensor) -> Tensor:
            return (a @ b.transpose(1, 2)).pow(2).mean()

        total = total + kernel(t, t).detach() + kernel(s, s) - 2 * kernel(s, t)
    return total


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin from the teacher's BN before a ReLU: the mean of N(β, γ²) below zero, or −3|γ|
    where that tail is too thin (Φ(−β/|γ|) ≤ 1e-3) to estimate."""
    s, m = bn_weight.abs().double(), bn_bias.double()
    normal = torch.distributions.Normal(0.0, 1.0)
    tail = normal.cdf(-m / s)
    margin = torch.where(tail > 1e-3, m - s * torch.exp(normal.log_prob(m / s)) / tail.clamp(min=1e-12), -3 * s)
    return margin.to(bn_weight.dtype)


def ofd_loss(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """OFD (Heo et al., ICCV 2019): a partial L2 on pre-activations — no penalty where both the teacher (below
    its margin) and the student (below it too) are inactive — summed over channel and position, averaged over the
    batch."""
    m = margin.view(1, -1, 1, 1)
    e = (student - m).pow(2) * ((student > m) & (teacher <= m)).to(student.dtype) + \
        (student - teacher).pow(2) * (((student > teacher) & (teacher > m) & (teacher <= 0)) |
                                      (teacher > 0)).to(student.dtype)
    return e.mean(dim=0).sum()


def hcl_loss(student: list[Tensor], teacher: list[Tensor], levels: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021): per level the MSE of the maps plus the MSEs of
    their average-pooled versions at 4×4, 2×2 and 1×1 (those smaller than the map), weighted ½, ¼, ⅛ in turn, the
    sum divided by the total weight."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        loss, weight, cnt = F.mse_loss(s, t), 1.0, 1.0
        for size in levels:
            if size >= s.shape[-1]:
                continue
            cnt /= 2.0
            loss = loss + cnt * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            weight += cnt
        total = total + loss / weight
    return total


def _singular(f: Tensor, n: int, layout: str) -> tuple[Tensor, Tensor]:
    """The first `n` right-singular vectors (columns L2-normalised) and singular values (L2-normalised) of each
    sample's map as a matrix: (C·H) × W in mdistiller's layout, (H·W) × C in RepDistiller's; non-finite → 0."""
    b, c, h, w = f.shape
    x = f.reshape(b, c * h, w).float() if layout == "ch_w" else f.reshape(b, c, h * w).transpose(1, 2)
    _, values, vh = torch.linalg.svd(x, full_matrices=False)
    v = torch.nan_to_num(vh.transpose(-2, -1), nan=0.0, posinf=0.0, neginf=0.0)
    values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return F.normalize(v[:, :, :n], dim=1), F.normalize(values[:, :n], dim=1)


def kdsvd_loss(student: list[Tensor], teacher: list[Tensor], k: int = 1, layout: str = "ch_w") -> Tensor:
    """KDSVD (Lee et al., ECCV 2018): each stage's leading right-singular vectors (k for the teacher, k + 3 for the
    student, each student vector sign-aligned to the teacher vector it is most collinear with), scaled by the
    teacher's singular values; the RBF kernels between consecutive stages' vectors compared by squared error,
    summed, over the batch size. The two references disagree on the matrix (see `_singular`): mdistiller's
    ("ch_w", the default) works for any channel counts, RepDistiller's ("hw_c") needs equal ones."""
    losses, previous = [], None
    for f_s, f_t in zip(student, teacher):
        v_t, s_t = _singular(f_t, k, layout)
        v_s, _ = _singular(f_s, k + 3, layout)
        cosine = v_s.transpose(-2, -1) @ v_t  # (B, k + 3, k)
        best = cosine.abs().amax(dim=1, keepdim=True)
        v_s = v_s @ torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
        v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
        if previous is not None:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - previous[0].unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - previous[1].unsqueeze(1)).pow(2) / 8)
            error = (rbf_s - rbf_t.detach()).pow(2)
            losses.append(torch.where(torch.isfinite(error), error, torch.zeros_like(error)).sum())
        previous = (v_s, v_t)
    return sum(losses, student[0].new_zeros(())) / student[0].shape[0]


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (a cosine of the centred rows)."""
    return F.cosine_similarity(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), dim=1, eps=eps)


def dist_relations(y_s: Tensor, y_t: Tensor, beta: float = 1.0, gamma: float = 1.0) -> Tensor:
    """DIST's relations of two batches of class probabilities: β·(1 − the mean Pearson correlation of each
    sample's probabilities across classes) + γ·(1 − that of each class's across the batch)."""
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return beta * inter + gamma * intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, beta: float = 1.0,
              gamma: float = 1.0) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): `dist_relations` of Y = softmax(z / τ), times τ²."""
    y_s = F.softmax(student_logits / temperature, dim=1)
    y_t = F.softmax(teacher_logits / temperature, dim=1)
    return temperature**2 * dist_relations(y_s, y_t, beta, gamma)


def standardise(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each sample's logits minus their mean, over their unbiased
    standard deviation + eps — KD on these at temperature τ is KD at a per-sample temperature τ·σ."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (eps + logits.std(dim=1, keepdim=True))


def nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's noise-contrastive estimation (Tian et al., ICLR 2020): `scores` (B, 1 + K) are normalised similarities,
    column 0 the positive; each is the probability the pair came from the data rather than from K uniform noise
    draws (P_n = 1 / num_data). Negative log-likelihood summed over the row, averaged over the batch."""
    k, noise = scores.shape[1] - 1, 1.0 / num_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + k * noise + eps))
    negative = torch.log((k * noise) / (scores[:, 1:] + k * noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]
