"""Feature, relational and modern logit distillation losses against hand-computed values and their invariants."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixkd.losses import functional as fl

torch.manual_seed(0)


def test_attention_map_is_the_normalised_channel_mean_of_squares():
    f = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]]])  # (1, 2, 2, 2)
    a = np.array([(1 + 9) / 2, (4 + 0) / 2, 0.0, (0 + 16) / 2])
    assert fl.attention_map(f).squeeze().tolist() == pytest.approx((a / np.linalg.norm(a)).tolist())


def test_at_pools_the_larger_map_and_sums_stages():
    s, t = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 8, 8)
    pooled = F.adaptive_avg_pool2d(t, 4)
    one = (fl.attention_map(s) - fl.attention_map(pooled)).pow(2).mean()
    assert fl.at_loss([s], [t]) == pytest.approx(one.item())
    assert fl.at_loss([s, s], [t, t]) == pytest.approx(2 * one.item())
    assert fl.at_loss([s], [s]) == 0


def test_sp_compares_row_normalised_gram_matrices():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # student Gram = I (rows already unit); teacher Gram = all 2s → rows (1/√2, 1/√2)
    expected = ((1 - 1 / math.sqrt(2)) ** 2 * 2 + (1 / math.sqrt(2)) ** 2 * 2) / 4
    assert fl.sp_loss(s, t) == pytest.approx(expected)
    assert fl.sp_loss(s[:, :, None, None], s[:, :, None, None] * 3) == pytest.approx(0, abs=1e-7)  # scale-free


def test_cc_pairs_consecutive_samples():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = torch.zeros(3, 2)
    # |Δ| rows (1,0), (0,2), (1,1): products of consecutive rows summed: 0 + 2 = 2, over B − 1 = 2
    assert fl.cc_loss(s, t) == pytest.approx(1.0)


def test_vid_is_the_gaussian_nll_with_variance_five_at_start():
    alpha = torch.full((3,), fl.vid_initial_log_scale())
    assert fl.vid_variance(alpha) == pytest.approx(torch.full((3,), 5.0))
    mean, target = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    assert fl.vid_loss(mean, target, alpha) == pytest.approx(0.5 * (1 / 5 + math.log(5)), rel=1e-5)


def test_rkd_is_zero_for_a_scaled_copy_and_matches_a_hand_count():
    e = torch.randn(5, 3)
    assert fl.rkd_loss(2 * e, e) == pytest.approx(0, abs=1e-5)  # distances normalised by their mean; angles scale-free
    # three points on a line: distances 1, 1, 2 (mean 4/3); the student's are 1, 2, 3 (mean 2)
    t, s = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[0.0], [1.0], [3.0]])
    d_t = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0.0]]) * 3 / 4
    d_s = torch.tensor([[0, 1, 3], [1, 0, 2], [3, 2, 0.0]]) / 2
    assert fl.rkd_loss(s, t, angle_weight=0) == pytest.approx(25 * F.smooth_l1_loss(d_s, d_t).item())
    assert fl.rkd_loss(s, t, distance_weight=0) == pytest.approx(0, abs=1e-6)  # collinear: the same angles


def test_pkt_is_kl_of_row_normalised_cosine_probabilities():
    s, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p_s = torch.tensor([[1.0, 0.5], [0.5, 1.0]]) / 1.5  # (cos + 1) / 2, rows normalised
    p_t = torch.full((2, 2), 0.5)
    expected = (p_t * torch.log((p_t + 1e-7) / (p_s + 1e-7))).mean()
    assert fl.pkt_loss(s, t) == pytest.approx(expected.item())
    assert fl.pkt_loss(t, t) == pytest.approx(0, abs=1e-7)


def test_ab_pushes_each_neuron_past_the_teachers_boundary_by_the_margin():
    s = torch.tensor([0.5, -2.0, 0.2, 3.0]).view(1, 1, 2, 2)
    t = torch.tensor([-1.0, -1.0, 1.0, 1.0]).view(1, 1, 2, 2)
    # teacher off: student 0.5 > −1 → (0.5+1)²; −2 is past the margin → 0. teacher on: 0.2 ≤ 1 → (0.2−1)²; 3 → 0
    hinge = 1.5**2 + 0.8**2
    assert fl.ab_loss([s], [t]) == pytest.approx(hinge * 3 / 1000)
    assert fl.ab_loss([s, s], [t, t]) == pytest.approx(1.5 * hinge * 3 / 1000)  # the earlier stage weighs ½


def test_ft_is_the_mean_absolute_difference_of_factors():
    a, b = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 4, 4)
    assert fl.ft_loss(fl.ft_factor(a), fl.ft_factor(b)) == pytest.approx(
        (fl.attention_map(a) - fl.attention_map(b)).abs().mean().item())


def test_fsp_matrix_is_the_positionwise_mean_product_of_two_maps():
    first, second = torch.rand(1, 2, 4, 4), torch.rand(1, 3, 2, 2)
    g = fl.fsp_matrix(first, second)
    pooled = F.adaptive_avg_pool2d(first, 2)
    assert g.shape == (1, 3, 2)
    assert g[0, 2, 1] == pytest.approx((second[0, 2] * pooled[0, 1]).mean().item())
    assert fl.fsp_loss([first, second], [first, second]) == 0


def test_nst_equals_the_elementwise_polynomial_kernel_mmd():
    s, t = torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4, 4)
    a, b = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)

    def kernel(x, y):  # the reference's elementwise form: (x_i · y_j)² over every pair of channels
        return (x.unsqueeze(1) * y.unsqueeze(2)).sum(-1).pow(2).mean()

    expected = kernel(b, b) + kernel(a, a) - 2 * kernel(a, b)
    assert fl.nst_loss([s], [t]) == pytest.approx(expected.item(), rel=1e-5)


def test_ofd_margin_is_the_mean_of_the_negative_tail():
    weight, bias = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 10.0])
    margin = fl.ofd_margin(weight, bias)
    assert margin[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # E[x | x < 0], x ~ N(0, 1)
    assert margin[1] == pytest.approx(-3.0)  # Φ(−10) ≈ 0: the −3σ fallback


def test_ofd_penalises_only_where_the_teacher_is_active_or_the_student_wrongly_is():
    m = torch.tensor([-0.5])
    s = torch.tensor([0.2, -1.0, 0.4, 0.1]).view(1, 1, 2, 2)
    t = torch.tensor([-1.0, -1.0, -0.2, 0.6]).view(1, 1, 2, 2)
    # t ≤ m: s 0.2 > m → (0.7)²; s −1 ≤ m → 0. m < t ≤ 0: s 0.4 > t → (0.6)². t > 0: (0.1 − 0.6)²
    assert fl.ofd_loss(s, t, m) == pytest.approx(0.7**2 + 0.6**2 + 0.5**2)


def test_hcl_weighs_pooled_levels_below_the_map_size():
    s, t = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    mse = [F.mse_loss(s, t)] + [F.mse_loss(F.adaptive_avg_pool2d(s, k), F.adaptive_avg_pool2d(t, k)) for k in (2, 1)]
    expected = (mse[0] + 0.5 * mse[1] + 0.25 * mse[2]) / 1.75  # 4×4: the 4 level is skipped
    assert fl.hcl_loss([s], [t]) == pytest.approx(expected.item())


def test_dist_is_one_minus_pearson_across_classes_and_across_the_batch_times_t_squared():
    z_s, z_t = torch.randn(6, 5), torch.randn(6, 5)
    y_s, y_t = F.softmax(z_s / 4, dim=1).numpy(), F.softmax(z_t / 4, dim=1).numpy()
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(y_s[:, c], y_t[:, c])[0, 1] for c in range(5)])
    assert fl.dist_loss(z_s, z_t, temperature=4, beta=2, gamma=3) == pytest.approx(16 * (2 * inter + 3 * intra),
                                                                                    rel=1e-4)
    assert fl.dist_loss(z_t, z_t) == pytest.approx(0, abs=1e-6)


def test_standardised_logits_have_zero_mean_and_unit_unbiased_std_and_any_scale_gives_the_same():
    z = torch.randn(4, 10)
    s = fl.standardise(z)
    assert s.mean(dim=1) == pytest.approx(torch.zeros(4), abs=1e-6)
    assert s.std(dim=1) == pytest.approx(torch.ones(4), abs=1e-5)
    assert fl.standardise(3 * z + 7) == pytest.approx(s, abs=1e-5)


def test_nce_loss_by_hand():
    scores = torch.tensor([[0.5, 0.1, 0.2]])  # one positive, K = 2 negatives
    noise = 2 / 10
    expected = -(math.log(0.5 / (0.5 + noise + 1e-7)) + math.log(noise / (0.1 + noise + 1e-7))
                 + math.log(noise / (0.2 + noise + 1e-7)))
    assert fl.nce_loss(scores, num_data=10) == pytest.approx(expected)


@pytest.mark.parametrize("layout", ["ch_w", "hw_c"])
def test_kdsvd_is_zero_for_a_student_equal_to_its_teacher_and_finite_otherwise(layout):
    maps = [torch.randn(4, 8, 8, 8), torch.randn(4, 8, 4, 4), torch.randn(4, 8, 2, 2)]
    assert fl.kdsvd_loss(maps, maps, layout=layout) == pytest.approx(0, abs=1e-6)
    other = [torch.randn_like(m) for m in maps]
    loss = fl.kdsvd_loss(other, maps, layout=layout)
    assert torch.isfinite(loss) and loss > 0
    assert fl.kdsvd_loss(maps[:1], maps[:1], layout=layout) == 0  # one stage: no pair of consecutive stages
