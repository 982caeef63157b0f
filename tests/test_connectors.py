"""Trainable parts of distillation methods: shapes, parameter counts by hand, and CRD's memory bank."""

import pytest
import torch
import torch.nn.functional as F

from mixkd.losses import parts as cn
from mixkd.losses import functional as fl


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("student, teacher, params", [
    ((2, 16, 32, 32), (2, 32, 16, 16), 16 * 32 * 9 + 32 + 2 * 32),  # stride-2 3×3 conv
    ((2, 64, 8, 8), (2, 64, 16, 16), 64 * 64 * 16 + 64 + 2 * 64),  # transposed 4×4
    ((2, 32, 16, 16), (2, 64, 16, 16), 32 * 64 + 64 + 2 * 64),  # 1×1
    ((2, 64, 10, 10), (2, 64, 8, 8), 64 * 64 * 9 + 64 + 2 * 64),  # a 3×3 kernel absorbs 10 → 8
])
def test_convreg_maps_a_student_map_to_the_teachers_shape(student, teacher, params):
    reg = cn.ConvReg(student, teacher)
    assert reg(torch.randn(student)).shape == teacher and count(reg) == params
    assert (reg(torch.randn(student)) >= 0).all() and not (cn.ConvReg(student, teacher, relu=False)(
        torch.randn(student)) >= 0).all()
    with pytest.raises(ValueError, match="no regressor"):
        cn.ConvReg((2, 16, 4, 4), (2, 16, 32, 32))


def test_vid_regressor_starts_at_variance_five_and_keeps_the_teachers_channels():
    reg = cn.VIDRegressor(16, 32)
    assert reg(torch.randn(2, 16, 4, 4)).shape == (2, 32, 4, 4)
    torch.testing.assert_close(fl.vid_variance(reg.log_scale.detach()), torch.full((32,), 5.0))
    assert count(reg) == 16 * 32 + 32 * 32 + 32 * 32 + 32


def test_embeddings_are_unit_vectors_for_crd_and_raw_for_cc():
    x = torch.randn(4, 64, 1, 1)
    torch.testing.assert_close(cn.Embed(64)(x).detach().norm(dim=1), torch.ones(4))
    assert cn.Embed(64, normalise=False)(x).shape == (4, 128)


def test_ft_paraphraser_reconstructs_the_teachers_shape_and_the_translator_matches_its_factor():
    para, trans = cn.Paraphraser(64), cn.Translator(16, 64)
    factor, rebuilt = para(torch.randn(2, 64, 8, 8))
    assert factor.shape == (2, 32, 8, 8) and rebuilt.shape == (2, 64, 8, 8)
    assert trans(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    assert count(para) == 2 * (64 * 64 * 9 + 64) + 2 * (64 * 32 * 9) + 32 + 64 + 2 * (32 * 32 * 9 + 32)


def test_ofd_connector_is_a_bias_free_conv_with_batchnorm_at_identity():
    conn = cn.OFDConnector(16, 32)
    assert count(conn) == 16 * 32 + 2 * 32 and conn[0].bias is None
    assert conn[1].weight.eq(1).all() and conn[1].bias.eq(0).all()


def test_review_fusion_gives_each_level_at_the_teachers_size():
    student = [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8), (2, 64, 1, 1)]
    teacher = [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 128, 1, 1)]
    fusion = cn.ReviewFusion(student, teacher)
    outputs = fusion([torch.randn(s) for s in student])
    assert [o.shape for o in outputs] == [torch.Size(t) for t in teacher]
    assert fusion.abfs[0].attention is None and all(abf.attention is not None for abf in fusion.abfs[1:])


def test_contrast_memory_fixes_z_on_the_first_batch_and_keeps_memories_unit_norm():
    torch.manual_seed(0)
    memory = cn.ContrastMemory(8, num_data=20)
    s, t = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    index = torch.tensor([0, 5, 7, 9])
    contrast = torch.cat([index[:, None], torch.randint(0, 20, (4, 6))], dim=1)
    out_s, out_t = memory.scores(s, t, contrast)
    z = memory.z.clone()
    raw = torch.exp((memory.teacher_bank[contrast] @ s.unsqueeze(2)).squeeze(2) / 0.07)
    assert z[0] == pytest.approx(raw.mean().item() * 20) and out_s == pytest.approx(raw / z[0])
    before = memory.teacher_bank[index].clone()
    memory.update(index, s, t)
    torch.testing.assert_close(memory.teacher_bank[index], F.normalize(0.5 * before + 0.5 * t, dim=1))
    torch.testing.assert_close(memory.student_bank[index].norm(dim=1), torch.ones(4))
    memory.scores(s, t, contrast)
    assert memory.z.equal(z)  # fixed after the first batch
