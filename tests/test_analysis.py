"""Analyses: metrics on hand-made logits with known answers, attacks against their analytic result, and the
tidy rows every run writes. Statistics, figures and notebooks over these rows: tests/test_report.py."""

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from mixkd.analysis import ANALYSES, COLUMNS, analyse_run
from mixkd.analysis.distillation import agreement, kl_divergence, pearson
from mixkd.analysis.features import scatter_ratio
from mixkd.analysis.robustness import fgsm, pgd
from mixkd.config import NO_MIX, Component, Distill, Params, Recipe, RunConfig
from mixkd.data import InMemoryDataset
from mixkd.metrics import METRICS, reliability_bins, softmax_entropy

REPO = Path(__file__).resolve().parents[1]
K = 4


def metric(name, logits, labels):
    return METRICS.get(name)(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(labels))


# ---- metrics on hand-made logits ---------------------------------------------------------------------------

def test_entropy_is_zero_for_one_hot_and_log_k_for_uniform_outputs_at_any_temperature():
    one_hot = torch.tensor([[100.0, 0, 0, 0], [0, 0, 100.0, 0]])
    uniform = torch.zeros(3, K)
    assert softmax_entropy(one_hot).max().item() == pytest.approx(0, abs=1e-12)
    for t in (1, 4):
        assert softmax_entropy(uniform, t).tolist() == pytest.approx([math.log(K)] * 3)
    assert metric("entropy", uniform, [0, 1, 2]) == pytest.approx(math.log(K))


def test_brier_and_nll_are_zero_for_a_perfect_prediction_and_known_for_a_uniform_one():
    labels = [0, 2, 3]
    perfect = 100 * torch.nn.functional.one_hot(torch.tensor(labels), K).float()
    assert metric("brier", perfect, labels) == pytest.approx(0, abs=1e-12)
    assert metric("nll", perfect, labels) == pytest.approx(0, abs=1e-6)
    assert metric("brier", torch.zeros(3, K), labels) == pytest.approx(1 - 1 / K)  # (1 - 1/K)² + (K-1)/K²
    assert metric("top1", perfect, labels) == 1.0 and metric("top5", torch.zeros(3, K), labels) == 1.0


def test_ece_is_zero_on_a_perfectly_calibrated_set_and_the_gap_otherwise():
    p = 0.75  # every sample predicts class 0 with confidence 0.75 ...
    logits = torch.tensor([[math.log(p / (1 - p)), 0.0]]).repeat(8, 1)
    calibrated = [0, 0, 0, 1, 0, 0, 0, 1]  # ... and 3 in 4 are class 0
    assert metric("ece", logits, calibrated) == pytest.approx(0, abs=1e-6)  # float32 logits
    assert metric("ece", logits, [0] * 8) == pytest.approx(0.25)
    count, conf, acc = reliability_bins(logits, torch.tensor(calibrated))
    b = math.ceil(0.75 * 15) - 1  # the (lo, hi] bin holding 0.75
    assert count.sum() == 8 and count[b] == 8 and conf[b].item() == pytest.approx(p) and acc[b].item() == 0.75


def test_identical_teacher_and_student_agree_fully_with_zero_kl_and_unit_correlation():
    z = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    assert agreement(z, z) == 1.0
    assert kl_divergence(z, z, 4.0) == pytest.approx(0, abs=1e-12)
    assert pearson(z, z).item() == pytest.approx(1) and pearson(z, 2 * z + 1, dim=1).mean().item() == pytest.approx(1)
    assert pearson(z, -z).item() == pytest.approx(-1)
    assert agreement(z, -z) == 0.0 and kl_divergence(z, -z) > 0


def test_scatter_ratio_on_hand_made_features():
    # class 0 at (0,0),(2,0): mean (1,0); class 1 at (0,4),(2,4): mean (1,4); centre (1,2).
    f = torch.tensor([[0.0, 0], [2, 0], [0, 4], [2, 4]])
    # S_w: each point is 1 from its class mean → 4; S_b: 2·|(0,-2)|² + 2·|(0,2)|² = 16
    assert scatter_ratio(f, torch.tensor([0, 0, 1, 1])) == pytest.approx(4 / 16)


# ---- attacks ------------------------------------------------------------------------------------------------

class Staged(nn.Module):
    """The model contract the analyses read: model(x, return_features=True) → (logits, Features)."""

    def __init__(self, features: int, classes: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(features, classes, bias=bias)

    def forward(self, x, return_features=False):
        from mixkd.models.base import Features

        pooled = x.flatten(1)
        return (self.fc(pooled), Features([pooled], pooled)) if return_features else self.fc(pooled)


def linear_model(w: torch.Tensor) -> nn.Module:
    model = Staged(w.shape[1], w.shape[0], bias=False)
    model.fc.weight.data = w.clone()
    return model.eval()


def test_fgsm_on_a_linear_model_steps_along_the_sign_of_the_weight_difference():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 6, generator=g)
    x, y = torch.randn(5, 1, 2, 3, generator=g), torch.tensor([0, 1, 1, 0, 1])
    eps, lo, hi = torch.tensor(0.1), torch.tensor(-10.0), torch.tensor(10.0)
    # CE gradient of a linear model: Σ_k p_k w_k − w_y = p_other · (w_other − w_y), of sign sign(w_other − w_y)
    direction = torch.stack([(w[1 - c] - w[c]).sign() for c in y.tolist()]).view_as(x)
    adv = fgsm(linear_model(w), x, y, eps, lo, hi)
    assert torch.equal(adv, x + eps * direction)
    # so the margin z_y − z_other shrinks by exactly ε·‖w_other − w_y‖₁
    margin = lambda inp: (inp.flatten(1) @ (w[y] - w[1 - y]).T).diagonal()  # noqa: E731
    assert torch.allclose(margin(x) - margin(adv), eps * (w[0] - w[1]).abs().sum(), atol=1e-5)
    clamped = fgsm(linear_model(w), x, y, eps, x.min() - 0.01, x.max() + 0.01)  # the valid range still holds
    assert clamped.min() >= x.min() - 0.01 and clamped.max() <= x.max() + 0.01


def test_pgd_with_one_step_of_size_epsilon_is_fgsm():
    from mixkd.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=4, in_chans=3).eval()
    x, y = torch.randn(8, 3, 8, 8).clamp(-2, 2), torch.randint(0, 4, (8,))  # a valid image: inside [lo, hi]
    eps, lo, hi = torch.full((1, 3, 1, 1), 0.05), torch.tensor(-2.0), torch.tensor(2.0)
    assert torch.equal(pgd(model, x, y, eps, lo, hi, steps=1, step=eps), fgsm(model, x, y, eps, lo, hi))
    adv = pgd(model, x, y, eps, lo, hi)  # 10 steps of ε/4 never leave the ε-ball
    assert (adv - x).abs().max() <= 0.05 + 1e-6


def test_robustness_rows_match_the_analytic_accuracy_of_a_linear_model_in_pixel_space():
    """Normalisation mean 0.5, std 0.25: ε in pixels is 4ε after normalisation; pixels stay in 100..150, so
    nothing clamps and both attacks reach x + 4ε·sign(w_other − w_y) (the sign never changes on a linear model)."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 4, generator=g)
    images = torch.randint(100, 151, (64, 1, 2, 2), generator=g, dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.25
    labels = (x.flatten(1) @ w.T).argmax(dim=1)
    labels[:8] = 1 - labels[:8]  # some wrong from the start
    data = InMemoryDataset("toy", images, labels, images, labels, num_classes=2, mean=(0.5,), std=(0.25,))
    config = RunConfig("teacher", "toy", Params(), Component("toy"), None, NO_MIX, None, None,
                       checkpoint_sha256="0" * 64)  # imported: the default evaluation batch
    model = linear_model(w)
    rows = pd.DataFrame(analyse_run(config, model, None, data, torch.device("cpu"),
                                    options={"robustness": {"samples": 50}, "tsne": {"samples": 20}}))
    margin = (x.flatten(1) @ (w[labels] - w[1 - labels]).T).diagonal()[:50]
    robust = rows[rows["metric"] == "robust_top1"]
    assert set(robust["attack"]) == {"fgsm", "pgd10"}
    for _, r in robust.iterrows():
        expected = (margin > 4 * r["epsilon"] * (w[0] - w[1]).abs().sum()).double().mean().item()
        assert r["value"] == pytest.approx(expected), (r["attack"], r["epsilon"])
    assert robust.groupby("epsilon")["value"].nunique().max() == 1  # FGSM = PGD here


# ---- rows ---------------------------------------------------------------------------------------------------

def test_rows_are_tidy_with_every_qualifier_and_teacher_rows_only_for_students():
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8), torch.arange(40) % K
    data = InMemoryDataset("toy", images, labels, images, labels, num_classes=K, mean=(0.5,), std=(0.25,))
    model = Staged(16, K)
    config = RunConfig("student", "toy", Params(), Component("toy"),
                       Recipe(schedule=Component("constant"), eval_batch_size=16), NO_MIX,
                       Distill("t", 2.0, "none", Component("kd")), 1)
    rows = pd.DataFrame(analyse_run(config, model, model, data, torch.device("cpu")))  # its own teacher
    assert list(rows.columns) == list(COLUMNS)
    assert set(rows.loc[rows["metric"] == "entropy_mean", "temperature"]) == {1.0, 2.0}  # T=1 and the run's T
    assert rows.loc[rows["metric"] == "agreement", "value"].item() == 1.0
    assert rows.loc[rows["metric"] == "kl_teacher_student", "temperature"].item() == 2.0
    assert rows.loc[rows["metric"] == "entropy_hist", "value"].sum() == pytest.approx(1)
    assert rows.loc[rows["metric"] == "reliability_count", "value"].sum() == 40
    assert sorted(rows.loc[rows["metric"] == "class_entropy", "class"]) == list(range(K))
    assert not (rows["metric"] == "tsne").any()  # seed 1: t-SNE only for teachers and seed 0
    as_teacher = replace(config, role="teacher", distill=None)
    teacher = pd.DataFrame(analyse_run(as_teacher, model, None, data, "cpu"))
    assert set(teacher.loc[teacher["metric"] == "entropy_mean", "temperature"]) == {1.0, 4.0}
    assert not teacher["metric"].isin(["agreement", "kl_teacher_student"]).any()
    tsne = teacher[teacher["metric"] == "tsne"]
    assert len(tsne) == 40 and tsne[["x", "y", "class"]].notna().all().all()
    assert set(ANALYSES.names()) >= {"scores", "reliability", "smoothness", "teacher_student", "feature_scatter",
                                      "tsne", "robustness"}
