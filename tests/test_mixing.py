"""Mixing variants: hand-reproduced draws, exact λ bookkeeping, and λ / PMU statistics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mixkd.mixing import MIXERS, Mixer, MixResult, fmu, manifold_mixup, mixup, pmu, resizemix
from mixkd.models import create_model
from mixkd.models.base import Features

NAMES = ["none", "mixup", "cutmix", "fmu", "pmu", "manifold_mixup", "resizemix", "mixup_cutmix"]
# every variant, with its non-default options too
CONFIGS = [(n, {}) for n in NAMES] + [
    ("mixup", {"per_sample": True}), ("cutmix", {"per_sample": True}), ("resizemix", {"per_sample": True}),
    ("pmu", {"reference_sampling": True}), ("resizemix", {"interpolation": "bilinear"}),
    ("mixup_cutmix", {"switch_prob": 0.0}), ("mixup_cutmix", {"switch_prob": 1.0})]


def batch(n=8, c=3, h=8, w=8, classes=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_registered():
    assert set(NAMES) <= set(MIXERS)


# --- hand-reproduced small cases ---------------------------------------------------------------

def test_mixup_two_samples_by_hand():
    x, y = torch.tensor([1.0, 3.0], dtype=torch.float64).view(2, 1, 1, 1), torch.tensor([0, 1])
    r = rng(3)
    perm, lam = r.permutation(2), r.beta(1.0, 1.0)  # the draws mixup makes, in order
    res = mixup(x, y, rng(3))
    other = [3.0, 1.0] if perm[0] == 1 else [1.0, 3.0]
    assert res.index.tolist() == perm.tolist() and res.y_b.tolist() == perm.tolist()
    assert torch.allclose(res.lam, torch.tensor([lam, lam], dtype=torch.float64))
    assert res.x.flatten().tolist() == pytest.approx([lam * 1 + (1 - lam) * other[0], lam * 3 + (1 - lam) * other[1]])


def test_mixup_per_sample_and_fmu_by_hand():
    x, y = torch.tensor([1.0, 3.0], dtype=torch.float64).view(2, 1, 1, 1), torch.tensor([0, 1])
    r = rng(5)
    perm, lam = r.permutation(2), r.beta(0.4, 0.4, size=2)
    for res in (mixup(x, y, rng(5), alpha=0.4, per_sample=True), fmu(x, y, rng(5), alpha=0.4)):
        assert res.index.tolist() == perm.tolist()
        assert res.lam.tolist() == pytest.approx(lam.tolist())
        expect = [lam[i] * x[i].item() + (1 - lam[i]) * x[perm[i]].item() for i in range(2)]
        assert res.x.flatten().tolist() == pytest.approx(expect)


def test_cutmix_box_by_hand():
    x, y = batch(n=2, h=8, w=8)
    r = rng(11)
    perm, lam0 = r.permutation(2), r.beta(1.0, 1.0)
    cy, cx = r.integers(0, 8, size=1)[0], r.integers(0, 8, size=1)[0]
    side = int(8 * math.sqrt(1 - lam0))
    y0, y1 = max(cy - side // 2, 0), min(cy + side // 2, 8)
    x0, x1 = max(cx - side // 2, 0), min(cx + side // 2, 8)
    res = MIXERS.get("cutmix")(x, y, rng(11))
    expect = x.clone()
    expect[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    assert torch.equal(res.x, expect)
    assert res.lam.tolist() == [1 - (y1 - y0) * (x1 - x0) / 64] * 2
    assert res.mask[:, 0, y0:y1, x0:x1].all() and res.mask.sum() == 2 * (y1 - y0) * (x1 - x0)


def test_resizemix_by_hand():
    x, y = batch(n=2, h=8, w=8)
    r = rng(2)
    perm, tau = r.permutation(2), r.uniform(0.1, 0.8)
    cy, cx = r.integers(0, 8, size=1)[0], r.integers(0, 8, size=1)[0]
    side = int(8 * tau)
    y0, y1 = max(cy - side // 2, 0), min(cy + side // 2, 8)
    x0, x1 = max(cx - side // 2, 0), min(cx + side // 2, 8)
    assert y1 > y0 and x1 > x0
    res = resizemix(x, y, rng(2))
    expect = x.clone()
    expect[:, :, y0:y1, x0:x1] = F.interpolate(x[perm], size=(y1 - y0, x1 - x0), mode="nearest")
    assert torch.equal(res.x, expect)
    assert res.lam.tolist() == [1 - (y1 - y0) * (x1 - x0) / 64] * 2


def test_resizemix_pastes_the_whole_partner():
    """τ = 0.5 on 8×8: a 4×4 nearest-neighbour thumbnail (every second pixel) of the partner."""
    x, y = batch(n=4, h=8, w=8)
    for seed in range(40):
        res = resizemix(x, y, rng(seed), scale=(0.5, 0.5))
        rows, cols = torch.nonzero(res.mask[0, 0], as_tuple=True)
        if len(rows) == 16:  # box not clipped
            r0, c0 = rows.min().item(), cols.min().item()
            assert torch.equal(res.x[:, :, r0:r0 + 4, c0:c0 + 4], x[res.index][:, :, ::2, ::2])
            assert res.lam.tolist() == [0.75] * 4
            return
    pytest.fail("no unclipped box drawn")


def test_resizemix_lambda_range():
    x, y = batch(n=4, h=32, w=32)
    lams = torch.cat([resizemix(x, y, rng(s)).lam for s in range(200)])
    assert lams.min() >= 1 - (int(0.8 * 32) / 32) ** 2 and lams.max() <= 1


def test_manifold_mixup_mixes_the_hidden_state():
    x, y = batch(n=6, c=1, dtype=torch.float32)
    model = create_model("cnn_tiny", num_classes=5, in_chans=1).eval()
    res = manifold_mixup(x, y, rng(1), stages=[1])
    assert res.x is x and res.stage == 1 and res.mask is None
    h = model.layers[0](model.stem(x))
    lam = res.lam.view(-1, 1, 1, 1)
    h = lam * h + (1 - lam) * h[res.index]
    expect = model.head(model.pool(model.layers[2](model.layers[1](h))))
    with torch.no_grad():
        assert torch.allclose(model(x, mix_at=res.stage, mix_fn=res.mix_hidden), expect, atol=1e-6)
    # the stem of cnn_tiny is the identity: mixing in front of stage 0 is input mixup with the same draws
    res0 = manifold_mixup(x, y, rng(2), stages=[0])
    mixed_input = res0.interpolate(x)
    with torch.no_grad():
        assert torch.allclose(model(x, mix_at=0, mix_fn=res0.mix_hidden), model(mixed_input), atol=1e-6)


def test_manifold_mixup_stage_is_uniform_over_allowed():
    x, y = batch(n=2)
    stages = [manifold_mixup(x, y, rng(s), stages=[0, 2, 3]).stage for s in range(600)]
    counts = [stages.count(k) for k in (0, 2, 3)]
    assert sum(counts) == 600 and stats.chisquare(counts).pvalue > 1e-3


# --- λ bookkeeping and statistics ---------------------------------------------------------------

@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_cutmix_lambda_is_one_minus_box_area(per_sample, seed):
    x, y = batch(n=6, h=7, w=9, seed=seed)
    res = MIXERS.get("cutmix")(x, y, rng(seed), per_sample=per_sample)
    area = res.mask.sum(dim=(1, 2, 3)) / (7 * 9)
    assert torch.equal(res.lam, 1 - area)
    m = res.mask.bool().expand_as(x)
    assert torch.equal(res.x[m], x[res.index][m]) and torch.equal(res.x[~m], x[~m])
    if not per_sample:
        assert (res.lam == res.lam[0]).all()


def test_mixup_per_batch_lambda_is_shared_and_beta_distributed():
    x, y = batch(n=4)
    lams = []
    for s in range(400):
        lam = mixup(x, y, rng(s), alpha=0.4).lam
        assert (lam == lam[0]).all()
        lams.append(lam[0].item())
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
@pytest.mark.parametrize("mixer", ["mixup", "fmu", "pmu"])
def test_per_sample_lambda_is_beta(mixer, alpha):
    x, y = batch(n=2000, c=1, h=1, w=1)
    params = {"mixup": {"per_sample": True}, "fmu": {}, "pmu": {"mixed_fraction": 0.5}}[mixer]
    res = MIXERS.get(mixer)(x, y, rng(7), alpha=alpha, **params)
    lam = res.lam[res.index != torch.arange(2000)] if mixer == "pmu" else res.lam  # pmu: the mixed half
    assert stats.kstest(lam.numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def _timm_switch_draws(n: int, h: int, switch_prob: float) -> tuple[list[bool], list[float]]:
    """timm's `Mixup` (DeiT's mixing) applied n times: whether each batch was CutMix, and its λ."""
    from timm.data import Mixup

    timm_mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=switch_prob, label_smoothing=0.0,
                     num_classes=4)
    np.random.seed(0)
    cut, lams = [], []
    for s in range(n):
        x, y = batch(n=4, c=1, h=h, w=h, classes=4, seed=s, dtype=torch.float32)
        out, target = timm_mix(x.clone(), y)
        cut.append(bool(((out == x) | (out == x.flip(0))).all()))
        lams.append(float(target[0, y[0]]) if y[0] != y[3] else float("nan"))  # pairs: i and B-1-i
    return cut, lams


def _my_switch_draws(name: str, n: int, h: int, switch_prob: float) -> tuple[list[bool], list[float]]:
    cut, lams = [], []
    for s in range(n):
        x, y = batch(n=4, c=1, h=h, w=h, classes=4, seed=s, dtype=torch.float32)
        res = MIXERS.get(name)(x, y, rng(s), switch_prob=switch_prob)
        cut.append(res.mask is not None)
        lams.append(float(res.lam[0]))
    return cut, lams


@pytest.mark.parametrize("switch_prob", [0.5, 0.8])
def test_mixup_cutmix_switches_as_timm_s_mixup(switch_prob):
    """DeiT's mixing against timm's own: the share of CutMix batches, and λ's law within each branch (CutMix:
    the clipped box's area; mixup: Beta(0.8, 0.8))."""
    mine_cut, mine_lam = map(np.array, _my_switch_draws("mixup_cutmix", 1200, 16, switch_prob))
    timm_cut, timm_lam = map(np.array, _timm_switch_draws(1200, 16, switch_prob))
    for cut in (mine_cut, timm_cut):
        assert stats.binomtest(int(cut.sum()), len(cut), switch_prob).pvalue > 1e-3
    for branch in (True, False):
        theirs = timm_lam[(timm_cut == branch) & ~np.isnan(timm_lam)]
        assert stats.ks_2samp(mine_lam[mine_cut == branch], theirs).pvalue > 1e-3
    assert stats.kstest(mine_lam[~mine_cut], stats.beta(0.8, 0.8).cdf).pvalue > 1e-3


def test_mixup_cutmix_is_one_of_its_branches_with_the_same_draws():
    x, y = batch(n=6, h=9, w=9)
    for seed in range(6):
        res, turn = MIXERS.get("mixup_cutmix")(x, y, rng(seed), mixup_alpha=0.3, cutmix_alpha=2.0), rng(seed)
        branch = (MIXERS.get("cutmix")(x, y, turn, alpha=2.0) if turn.random() < 0.5
                  else mixup(x, y, turn, alpha=0.3))
        for f in ("x", "lam", "index", "mask"):
            va, vb = getattr(res, f), getattr(branch, f)
            assert (va is None and vb is None) or torch.equal(va, vb), f


@pytest.mark.parametrize("params, says", [({"mixup_alpha": 0.0}, "mixup_alpha must be > 0"),
                                          ({"cutmix_alpha": -1.0}, "cutmix_alpha must be > 0"),
                                          ({"switch_prob": 1.5}, "switch_prob must be in")])
def test_the_switch_refuses_what_either_branch_would_on_every_draw(params, says):
    x, y = batch()
    for seed in range(4):  # whichever branch the draw takes
        with pytest.raises(ValueError, match=says):
            MIXERS.get("mixup_cutmix")(x, y, rng(seed), **params)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [7, 64])
def test_pmu_mixes_exactly_the_fraction(fraction, n):
    x, y = batch(n=n, c=1, h=2, w=2)
    res = pmu(x, y, rng(n), mixed_fraction=fraction)
    drawn = res.lam < 1  # Beta(1, 1) draws are < 1 almost surely
    assert drawn.sum().item() == int(fraction * n + 0.5)
    clean = ~drawn
    assert torch.equal(res.index[clean], torch.arange(n)[clean]) and torch.equal(res.x[clean], x[clean])


def test_pmu_full_fraction_is_fmu():
    x, y = batch(n=16)
    a, b = pmu(x, y, rng(4), mixed_fraction=1.0), fmu(x, y, rng(4))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam) and torch.equal(a.index, b.index)


def untouched_pmf(n: int, draws: int) -> np.ndarray:
    """Exact law of the number of positions never hit by `draws` uniform draws with replacement."""
    p = np.zeros(n + 1)
    p[0] = 1.0  # p[k]: k distinct positions hit so far
    for _ in range(draws):
        p = p * np.arange(n + 1) / n + np.concatenate([[0.0], p[:-1] * (n - np.arange(n)) / n])
    return p[::-1]  # index: untouched count = n - hit


def test_pmu_reference_sampling_mixes_about_40_percent_of_64():
    """The reference's partmixup 0.9 ('10% mixed') at B = 64: int(57.6) = 57 draws with replacement."""
    n, draws = 64, int(64 * 0.9)
    pmf = untouched_pmf(n, draws)
    expected = n * (1 - 1 / n) ** draws
    assert (np.arange(n + 1) * pmf).sum() == pytest.approx(expected)
    assert expected / n == pytest.approx(0.4075, abs=5e-4)  # not 0.1

    x, y = batch(n=n, c=1, h=1, w=1)
    r = rng(0)
    mixed = np.array([(pmu(x, y, r, mixed_fraction=0.1, reference_sampling=True).lam < 1).sum().item()
                      for _ in range(3000)])
    sd = math.sqrt(((np.arange(n + 1) - expected) ** 2 * pmf).sum())
    assert abs(mixed.mean() - expected) < 4 * sd / math.sqrt(len(mixed))
    # the whole law, not just the mean: chi-square over the well-populated counts
    observed = np.bincount(mixed, minlength=n + 1)
    keep = pmf * len(mixed) >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(pmf[keep], pmf[~keep].sum()) * len(mixed)
    assert stats.chisquare(obs, exp).pvalue > 1e-3


# --- targets and interpolation ------------------------------------------------------------------

def test_soft_targets_by_hand():
    res = MixResult(torch.zeros(1), torch.tensor([0]), torch.tensor([2]), torch.tensor([0.75]), torch.tensor([0]))
    assert res.soft_targets(3).tolist() == [pytest.approx([0.75, 0.0, 0.25])]
    # smoothing 0.3 over K = 3: onehot → [0.8, 0.1, 0.1]
    assert res.soft_targets(3, smoothing=0.3).tolist() == [pytest.approx([0.625, 0.1, 0.275])]


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("name,params", CONFIGS)
def test_soft_targets_are_distributions(name, params, smoothing):
    x, y = batch(n=16, classes=5)
    t = Mixer(name, params)(x, y, rng(1)).soft_targets(5, smoothing)
    assert t.shape == (16, 5) and (t >= 0).all()
    assert torch.allclose(t.sum(dim=1), torch.ones(16))
    if smoothing:
        assert (t >= smoothing / 5 - 1e-7).all()


def test_interpolate_formula():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 4, generator=g), dim=1)
    res = MixResult(torch.zeros(5), torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long),
                    torch.tensor([1.0, 0.0, 0.3, 0.5, 0.9]), torch.tensor([4, 2, 0, 3, 1]))
    out = res.interpolate(p)
    for i in range(5):
        lam, j = res.lam[i], res.index[i]
        assert torch.allclose(out[i], lam * p[i] + (1 - lam) * p[j])
    assert torch.allclose(out.sum(dim=1), torch.ones(5))


def test_bf16_hidden_states_blend_with_the_labels_lambda():
    """Under bf16 autocast manifold mixup blends bf16 hidden states: λ = 0.3 must not become bf16's 0.30078."""
    h = torch.randn(2, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    res = MixResult(h, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.tensor([0.3, 0.7]),
                    torch.tensor([1, 0]))
    lam = res.lam[:, None]
    expected = (lam * h.float() + (1 - lam) * h[[1, 0]].float()).bfloat16()
    assert torch.equal(res.interpolate(h), expected)


def features(seed: int = 0) -> Features:
    """A clean forward's features of 4 samples: 8×8 stem, stage maps at 8×8 and 4×4, a 6-d pooled vector."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)]
    return Features(maps, torch.randn(4, 6, generator=g, dtype=torch.float64),
                    torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64), maps, [m + 1 for m in maps])


def test_teacher_features_are_blended_the_way_the_inputs_were():
    """The `student` view's teacher features: λ-blends for mixup (pmu's clean rows untouched); for a pasted
    box, the partner's cells where the box covers a cell and the covered share on its edge."""
    f, x, y = features(), *batch(n=4, h=8, w=8)
    for res in (mixup(x, y, rng(1), per_sample=True), pmu(x, y, rng(2), mixed_fraction=0.5)):
        out, lam = res.blend_features(f), res.lam.view(-1, 1, 1, 1)
        for got, clean in zip([*out.stages, *out.preact, out.stem], [*f.stages, *f.preact, f.stem]):
            assert torch.allclose(got, lam * clean + (1 - lam) * clean[res.index])
        assert torch.allclose(out.pooled, res.lam[:, None] * f.pooled + (1 - res.lam[:, None]) * f.pooled[res.index])
    clean = res.lam == 1  # pmu's unmixed half
    assert clean.sum() == 2 and torch.equal(out.stages[0][clean], f.stages[0][clean])

    mask = torch.zeros(4, 1, 8, 8, dtype=torch.float64)
    mask[:, :, 2:6, 0:3] = 1  # rows 2-5 line up with the 4×4 grid; columns 0-2 do not
    index, lam = torch.tensor([1, 0, 3, 2]), torch.full((4,), 1 - 12 / 64, dtype=torch.float64)
    out = MixResult(x, y, y[index], lam, index, mask=mask).blend_features(f)
    full = f.stages[0].clone()
    full[:, :, 2:6, 0:3] = f.stages[0][index][:, :, 2:6, 0:3]
    assert torch.equal(out.stages[0], full) and torch.equal(out.stem[:, :, 2:6, 0:3], f.stem[index][:, :, 2:6, 0:3])
    half = out.stages[1]  # a 4×4 cell is 2×2 pixels: rows 1-2 of it are inside, column 0 fully, column 1 half
    share = torch.tensor([0.0, 1.0, 1.0, 0.0])[:, None] * torch.tensor([1.0, 0.5, 0.0, 0.0])[None, :]
    want = (1 - share) * f.stages[1] + share * f.stages[1][index]
    assert torch.allclose(half, want.to(half.dtype))
    assert torch.allclose(out.pooled, lam[:, None] * f.pooled + (1 - lam[:, None]) * f.pooled[index])


def test_manifold_mixup_blends_only_what_lies_downstream_of_its_stage():
    f, (x, y) = features(), batch(n=4)
    res = manifold_mixup(x, y, rng(3), stages=[1])
    out, lam = res.blend_features(f), res.lam.view(-1, 1, 1, 1)
    assert torch.equal(out.stem, f.stem) and torch.equal(out.stages[0], f.stages[0])
    assert torch.equal(out.preact[0], f.preact[0])
    assert torch.allclose(out.stages[1], lam * f.stages[1] + (1 - lam) * f.stages[1][res.index])
    assert not torch.equal(out.pooled, f.pooled)


# --- identities and determinism -----------------------------------------------------------------

@pytest.mark.parametrize("name,params", [("pmu", {"mixed_fraction": 0.0}), ("none", {})])
def test_no_mixing_is_identity(name, params):
    x, y = batch()
    res = Mixer(name, params)(x, y, rng(0))
    assert torch.equal(res.x, x) and (res.lam == 1).all()
    assert torch.equal(res.soft_targets(5), F.one_hot(y, 5).float())


@pytest.mark.parametrize("name", [n for n in NAMES if "alpha" in MIXERS.params(n)])
@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_a_beta_mixer_refuses_alpha_that_would_not_mix(name, alpha):
    """It would train unmixed under its own label: no mixing is `mix: none`."""
    x, y = batch()
    with pytest.raises(ValueError, match="alpha must be > 0"):
        Mixer(name, {"alpha": alpha})(x, y, rng(0))


@pytest.mark.parametrize("name,params", CONFIGS)
def test_prob_zero_is_identity(name, params):
    x, y = batch()
    res = Mixer(name, params, prob=0.0)(x, y, rng(0))
    assert res.x is x and (res.lam == 1).all() and torch.equal(res.index, torch.arange(8)) and res.stage is None


@pytest.mark.parametrize("name,params", CONFIGS)
def test_same_seed_same_result_and_input_untouched(name, params):
    x, y = batch()
    x0 = x.clone()
    a, b = Mixer(name, params)(x, y, rng(9)), Mixer(name, params)(x, y, rng(9))
    assert torch.equal(x, x0)
    for f in ("x", "y_a", "y_b", "lam", "index", "mask"):
        va, vb = getattr(a, f), getattr(b, f)
        assert (va is None and vb is None) or torch.equal(va, vb), f
    assert a.stage == b.stage
    assert torch.equal(a.y_b, y[a.index]) and torch.equal(a.y_a, y)
    assert ((a.lam >= 0) & (a.lam <= 1)).all()


def test_params_are_the_registry_s_and_leading_inputs_are_declared():
    defaults = {name: {k: p.default for k, p in MIXERS.params(name).items()} for name in MIXERS}
    assert defaults["pmu"] == {"alpha": 1.0, "mixed_fraction": 0.1, "reference_sampling": False}
    assert defaults["resizemix"]["scale"] == (0.1, 0.8) and defaults["manifold_mixup"]["stages"] == (0, 1, 2)
    assert MIXERS.settings == {"prob": 1.0}
    with pytest.raises(TypeError, match="must take x, y, rng: it lacks rng"):
        MIXERS.register("wrong")(lambda x, y, generator: None)
