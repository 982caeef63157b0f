"""Losses: hand-computed cases, the T² factor, and DKD / MIX-KD against re-implementations of their references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixkd.losses import LOSSES, LossInputs, create_loss, soft_cross_entropy
from mixkd.mixing import MixResult, identity, mixup

K = 10


def logits(n=8, k=K, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g, dtype=torch.float64)


def labels(n=8, k=K, seed=1):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def clean(y):
    return identity(torch.zeros(len(y), 1), y)


def run(loss, s, t, mix, epoch=100, targets=None):
    """Apply a loss the way the training step does: teacher probabilities interpolated by the mix."""
    tp = mix.interpolate(loss.teacher_probs(t)) if loss.uses_teacher else None
    targets = mix.soft_targets(s.shape[1]).to(s.dtype) if targets is None else targets
    return loss(LossInputs(s, targets, tp, mix, epoch))


def test_registered():
    assert {"ce", "kd", "std_kd", "dkd"} <= set(LOSSES)


def test_create_loss_binds_temperature_and_params():
    assert create_loss("dkd", temperature=2.0).temperature == 2.0
    assert create_loss("dkd").temperature == 4.0 and create_loss("std_kd").temperature == 1.0
    assert create_loss("kd", temperature=8.0, ce_weight=0.0).ce_weight == 0.0
    with pytest.raises(TypeError, match="warm_up"):  # a study's are checked when it is read
        create_loss("dkd", warm_up=5)


# --- CE and KD ----------------------------------------------------------------------------------

def test_soft_cross_entropy_is_cross_entropy_for_one_hot():
    s, y = logits(), labels()
    assert torch.allclose(soft_cross_entropy(s, F.one_hot(y, K).double()), F.cross_entropy(s, y))


def test_ce_by_hand():
    s = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # p = (1/4, 3/4)
    y = torch.tensor([1])
    out = run(create_loss("ce"), s, None, clean(y))
    assert out.keys() == {"ce"} and out["ce"].item() == pytest.approx(math.log(4 / 3))
    # mixed label 0.5/0.5: -(½ log ¼ + ½ log ¾)
    mix = MixResult(torch.zeros(1), torch.tensor([0]), y, torch.tensor([0.5]), torch.tensor([0]))
    assert run(create_loss("ce"), s, None, mix)["ce"].item() == pytest.approx(-0.5 * math.log(3 / 16))
    with pytest.raises(TypeError):
        create_loss("ce").teacher_probs(s)


def test_kd_by_hand():
    """T = 4: teacher logits (0, 4 ln 3) → p_t = (¼, ¾); student (0, 0) → (½, ½)."""
    s = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[0.0, 4 * math.log(3.0)]], dtype=torch.float64)
    out = run(create_loss("kd", temperature=4.0), s, t, clean(torch.tensor([1])))
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert out["kd"].item() == pytest.approx(0.9 * 16 * kl)
    assert out["ce"].item() == pytest.approx(0.1 * math.log(2))


def test_kd_identical_logits_at_t1_is_zero():
    s = logits()
    out = run(create_loss("kd", temperature=1.0), s, s.clone(), clean(labels()))
    assert out["kd"].abs().item() < 1e-12


def test_kd_has_the_t_squared_factor():
    s, t, y = logits(seed=2), logits(seed=3), labels()
    out = run(create_loss("kd", temperature=4.0, ce_weight=0.0, kd_weight=1.0), s, t, clean(y))
    p_t, p_s = F.softmax(t / 4, dim=1).numpy(), F.softmax(s / 4, dim=1).numpy()
    manual = 16 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    assert out["kd"].item() == pytest.approx(manual, rel=1e-10)


def test_kd_student_view_uses_interpolated_teacher_probs():
    s, t, y = logits(), logits(seed=5), labels()
    mix = mixup(torch.zeros(8, 1, 2, 2), y, np.random.default_rng(0), per_sample=True)
    loss = create_loss("kd", temperature=4.0, ce_weight=0.0, kd_weight=1.0)
    p = F.softmax(t / 4, dim=1)
    lam = mix.lam[:, None].double()
    target = lam * p + (1 - lam) * p[mix.index]
    manual = 16 * F.kl_div(F.log_softmax(s / 4, dim=1), target, reduction="batchmean")
    assert torch.allclose(run(loss, s, t, mix)["kd"], manual)


# --- MIX-KD's std_kd ----------------------------------------------------------------------------

def mixstd_reference(logit_s, logit_t, target, gamma=0.1, alpha=0.9):
    """MIX-KD's distiller_zoo/MIXSTD.py, written out: std-scaled CE (sum / B) and KL (batchmean)."""
    z_s = logit_s / torch.std(logit_s, dim=-1, keepdim=True)
    z_t = logit_t / torch.std(logit_t, dim=-1, keepdim=True)
    ce = gamma * torch.sum(-F.log_softmax(z_s, -1) * target) / logit_s.shape[0]
    kd = alpha * torch.sum(F.softmax(z_t, 1) * (F.log_softmax(z_t, 1) - F.log_softmax(z_s, 1))) / logit_s.shape[0]
    return ce, kd


def test_std_kd_by_hand():
    """Student (1, 2, 3) has std 1; teacher (0, 2, 4) has std 2 → both standardise to the same shape: KL = 0."""
    s = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 2.0, 4.0]], dtype=torch.float64)
    out = run(create_loss("std_kd"), s, t, clean(torch.tensor([2])))
    assert out["kd"].abs().item() < 1e-12
    assert out["ce"].item() == pytest.approx(0.1 * math.log(1 + math.exp(-1) + math.exp(-2)))


def test_std_kd_matches_reference_with_mixed_targets():
    s, t, y = logits(seed=6), logits(seed=7, scale=8.0), labels()
    mix = mixup(torch.zeros(8, 1, 2, 2), y, np.random.default_rng(1), per_sample=True)
    targets = mix.soft_targets(K).double()
    # the reference's teacher sees the mixed images: no interpolation of its probabilities
    loss = create_loss("std_kd")
    out = loss(LossInputs(s, targets, loss.teacher_probs(t), mix, 1))
    ce, kd = mixstd_reference(s, t, targets)
    assert torch.allclose(out["ce"], ce) and torch.allclose(out["kd"], kd)


def test_std_kd_has_no_t_squared_and_standardises_teacher():
    s, t, y = logits(seed=8), logits(seed=9), labels()
    loss = create_loss("std_kd", temperature=2.0, ce_weight=0.0, kd_weight=1.0)
    z_s, z_t = s / s.std(dim=1, keepdim=True), t / t.std(dim=1, keepdim=True)
    manual = F.kl_div(F.log_softmax(z_s / 2, dim=1), F.softmax(z_t / 2, dim=1), reduction="batchmean")
    assert torch.allclose(run(loss, s, t, clean(y))["kd"], manual)
    # standardised targets ignore the scale and offset of the teacher's logits
    assert torch.allclose(loss.teacher_probs(3 * t + 5), loss.teacher_probs(t))
    assert torch.allclose(loss.teacher_probs(t), F.softmax(z_t / 2, dim=1))


# --- DKD ----------------------------------------------------------------------------------------

def dkd_reference(z_s, z_t, y, alpha, beta, T, reduce=True):
    """mdistiller's logit-based dkd_loss, re-derived: binary (target, rest) KL + KL over non-targets, × T²."""
    gt = F.one_hot(y, z_s.shape[1]).bool()
    p_s, p_t = F.softmax(z_s / T, dim=1), F.softmax(z_t / T, dim=1)
    b_s = torch.stack([p_s[gt], p_s.masked_fill(gt, 0).sum(1)], 1)
    b_t = torch.stack([p_t[gt], p_t.masked_fill(gt, 0).sum(1)], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1)
    q_t = F.softmax(z_t / T - 1000.0 * gt, dim=1)
    log_q_s = F.log_softmax(z_s / T - 1000.0 * gt, dim=1)
    nckd = torch.where(q_t > 0, q_t * (q_t.log() - log_q_s), torch.zeros_like(q_t)).sum(1)
    per_sample = T**2 * (alpha * tckd + beta * nckd)
    return per_sample.mean() if reduce else per_sample


def total_kd(out):
    return out["tckd"] + out["nckd"]


def test_dkd_by_hand():
    """Student uniform over 3 classes, teacher (½, ¼, ¼), target 0: TCKD = ½ ln 1.5 + ½ ln 0.75, NCKD = 0."""
    s = torch.zeros(1, 3, dtype=torch.float64)
    loss = create_loss("dkd", temperature=1.0)
    p_t = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    y = torch.tensor([0])
    out = loss(LossInputs(s, F.one_hot(y, 3).double(), p_t, clean(y), 20))
    assert out["tckd"].item() == pytest.approx(0.5 * math.log(1.125))
    assert out["nckd"].abs().item() < 1e-12
    assert out["ce"].item() == pytest.approx(math.log(3))
    # at T = 4 the same probabilities give 16× the KD part
    out4 = create_loss("dkd")(LossInputs(s, F.one_hot(y, 3).double(), p_t, clean(y), 20))
    assert out4["tckd"].item() == pytest.approx(16 * 0.5 * math.log(1.125))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_mdistiller_for_clean_labels(T):
    s, t, y = logits(seed=10), logits(seed=11, scale=5.0), labels()
    out = run(create_loss("dkd", temperature=T, alpha=1.0, beta=8.0), s, t, clean(y), epoch=20)
    assert torch.allclose(total_kd(out), dkd_reference(s, t, y, 1.0, 8.0, T))
    assert torch.allclose(out["tckd"], dkd_reference(s, t, y, 1.0, 0.0, T))
    assert torch.allclose(out["ce"], F.cross_entropy(s, y))


def test_dkd_mixed_labels_weight_both_classes():
    s, t, y = logits(seed=12), logits(seed=13), labels()
    mix = mixup(torch.zeros(8, 1, 2, 2), y, np.random.default_rng(3), per_sample=True)
    loss = create_loss("dkd", temperature=4.0, alpha=0.5, beta=2.0)
    p = F.softmax(t / 4, dim=1)
    tp = mix.interpolate(p)
    out = loss(LossInputs(s, mix.soft_targets(K).double(), tp, mix, 30))
    # per sample, decouple w.r.t. y_a and y_b; the teacher distribution is the interpolated one
    z_t = tp.log() * 4  # logits whose softmax at T = 4 is tp
    lam = mix.lam.double()
    expect = (lam * dkd_reference(s, z_t, mix.y_a, 0.5, 2.0, 4.0, reduce=False)
              + (1 - lam) * dkd_reference(s, z_t, mix.y_b, 0.5, 2.0, 4.0, reduce=False)).mean()
    assert torch.allclose(total_kd(out), expect)
    assert torch.allclose(out["ce"], soft_cross_entropy(s, mix.soft_targets(K).double()))


def test_dkd_warmup_scales_only_the_kd_part():
    s, t, y = logits(seed=14), logits(seed=15), labels()
    loss = create_loss("dkd", warmup=20)
    full, early = run(loss, s, t, clean(y), epoch=40), run(loss, s, t, clean(y), epoch=5)
    assert torch.allclose(early["tckd"], 0.25 * full["tckd"]) and torch.allclose(early["nckd"], 0.25 * full["nckd"])
    assert torch.equal(early["ce"], full["ce"])


def test_dkd_saturated_teacher_has_finite_gradients():
    s = logits(seed=16).requires_grad_()
    y = labels()
    tp = F.one_hot(y, K).double()  # p(target) = 1: no non-target distribution
    out = create_loss("dkd")(LossInputs(s, tp, tp, clean(y), 20))
    assert out["nckd"].item() == 0.0
    sum(out.values()).backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", ["ce", "kd", "std_kd", "dkd"])
def test_parts_are_finite_scalars_with_gradients(name):
    s, t, y = logits(seed=17).requires_grad_(), logits(seed=18), labels()
    mix = mixup(torch.zeros(8, 1, 2, 2), y, np.random.default_rng(4))
    out = run(create_loss(name), s, t, mix)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
