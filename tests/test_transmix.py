import copy

import numpy as np
import pytest
import timm
import torch

from mixkd.errors import MixkdError
from mixkd.mixing import MIXERS, MixResult, Mixer, cutmix
from mixkd.mixing.transmix import ClassAttention, TransMixResult
from mixkd.models import create_model

TINY_VIT = dict(patch_size=4, depth=2, embed_dim=32, num_heads=2, img_size=32, num_classes=10)


def with_mask(mask: torch.Tensor, lam_area: torch.Tensor | None = None) -> TransMixResult:
    n = len(mask)
    y = torch.arange(n)
    lam = 1 - mask.mean(dim=(1, 2, 3)) if lam_area is None else lam_area
    return TransMixResult(torch.zeros(n, 3, *mask.shape[-2:]), y, y.flip(0), lam, y.flip(0), mask=mask)


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_class_attention_equals_attention_weights(reg_tokens):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", reg_tokens=reg_tokens, **TINY_VIT).eval()
    x = torch.randn(3, 3, 32, 32)
    ref = copy.deepcopy(vit)  # unfused copy: timm materialises the weights, read them after the softmax
    for block in ref.blocks:
        block.attn.fused_attn = False
    seen = []
    ref.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        ref(x)
        expected = seen[0].mean(1)[:, 0, 1 + reg_tokens:]  # (B, heads, N, N) → class row, patch columns
        with ClassAttention(vit) as cap:
            vit(x)
    assert cap.attention.shape == (3, 64) and cap.grid == (8, 8)
    torch.testing.assert_close(cap.attention, expected, rtol=1e-5, atol=1e-7)


def test_class_attention_through_timmnet():
    torch.manual_seed(0)
    net = create_model("timm/vit_tiny_patch16_224", **TINY_VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with ClassAttention(net) as cap:
            net(x)
        with ClassAttention(net.timm_model) as raw:
            net.timm_model(x)
    assert torch.equal(cap.attention, raw.attention)
    assert not net.timm_model.blocks[-1].attn._forward_hooks  # the hook is gone after the block


def test_uniform_attention_gives_area_ratio():
    rng = np.random.default_rng(0)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    mix = MIXERS.get("transmix")(x, y, rng, per_sample=True)
    assert isinstance(mix, TransMixResult)
    relabelled = mix.relabel(torch.full((6, 64), 1 / 65), (8, 8))  # one patch per pixel: the mask is unchanged
    torch.testing.assert_close(relabelled.lam, mix.lam)
    # patch-aligned box on 32×32 with 4×4 patches: the downsampled mask keeps the area, too
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:16] = 1
    lam = with_mask(mask).relabel(torch.ones(1, 64), (8, 8)).lam
    torch.testing.assert_close(lam, torch.tensor([1 - 16 * 12 / 1024]))


def test_relabel_by_hand():
    mask = torch.zeros(2, 1, 4, 4)  # 2×2 patches of 2×2 pixels
    mask[0, :, 0:2, 0:2] = 1  # sample 0: partner's box is exactly patch (0, 0); λ_area = 0.75
    mask[1, :, 0, 2:4] = 1  # sample 1: top row of patch (0, 1); nearest reads its top-left pixel: all of it counts
    attn = torch.tensor([[0.4, 0.1, 0.1, 0.2],  # not normalised: the class token's self-attention is dropped
                         [0.1, 0.3, 0.2, 0.2]])
    mix = with_mask(mask)
    out = mix.relabel(attn, (2, 2))
    # sample 0: λ_attn = 1 - 0.4/0.8 = 0.5 → (0.75 + 0.5)/2; sample 1: λ_area = 14/16, λ_attn = 1 - 0.3/0.8
    torch.testing.assert_close(out.lam, torch.tensor([0.625, (14 / 16 + 0.625) / 2]))
    assert type(out) is MixResult and out.mask is mix.mask and torch.equal(out.y_b, mix.y_b)
    torch.testing.assert_close(out.soft_targets(2)[0], torch.tensor([0.625, 0.375]))


def test_mixer_is_cutmix_box():
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    a = Mixer("transmix", {"alpha": 1.0})(x, y, np.random.default_rng(3))
    b = cutmix(x, y, np.random.default_rng(3), alpha=1.0)
    assert isinstance(a, TransMixResult)
    for name in ("x", "lam", "index", "mask"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_mixup_transmix_relabels_its_cutmix_batches_only():
    """TransMix's own recipe: DeiT's switch, whose CutMix batches (half, in law) are TransMix's and whose mixup
    batches are plain mixup, relabelled by nothing."""
    net = create_model("timm/vit_tiny_patch16_224", **TINY_VIT)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    kinds = []
    for seed in range(40):
        mix = Mixer("mixup_transmix", {"mixup_alpha": 0.4})(x, y, np.random.default_rng(seed))
        turn = np.random.default_rng(seed)
        cut = turn.random() < 0.5
        same = cutmix(x, y, turn, alpha=1.0) if cut else MIXERS.get("mixup")(x, y, turn, alpha=0.4)
        assert isinstance(mix, TransMixResult) == cut
        assert torch.equal(mix.x, same.x) and torch.equal(mix.lam, same.lam)
        _, final = mix.forward_student(net, x)
        assert torch.equal(final.lam, mix.lam) != cut  # relabelled where CutMix, as it was where mixup
        kinds.append(cut)
    assert 10 < sum(kinds) < 30


def test_training_step_relabels_with_student_attention():
    torch.manual_seed(0)
    net = create_model("timm/vit_tiny_patch16_224", **TINY_VIT)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    mix = Mixer("transmix")(x, y, np.random.default_rng(0))
    with ClassAttention(net) as cap:
        logits = net(mix.x)
    final = mix.relabel(cap.attention, cap.grid)
    assert logits.shape == (4, 10) and final.lam.shape == (4,) and bool(((final.lam >= 0) & (final.lam <= 1)).all())
    assert not cap.attention.requires_grad


def test_a_compiled_student_relabels_as_the_eager_one():
    """engine.compile wraps the student; the attention hook sits on the eager module inside (~20 s on 2 cores)."""
    torch.manual_seed(0)
    net = create_model("timm/vit_tiny_patch16_224", **{**TINY_VIT, "embed_dim": 16, "depth": 1})
    compiled = torch.compile(net)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for seed in range(3):  # later batches, other boxes: the hook still fires without recompiling per call
        mix = Mixer("transmix")(x, y, np.random.default_rng(seed))
        (eager_logits, eager), (logits, relabelled) = mix.forward_student(net, x), mix.forward_student(compiled, x)
        torch.testing.assert_close(logits, eager_logits)
        torch.testing.assert_close(relabelled.lam, eager.lam)
        assert not torch.equal(relabelled.lam, mix.lam)


def test_non_vit_student_is_rejected():
    with pytest.raises(MixkdError, match="TransMix needs a ViT student") as info:
        ClassAttention(create_model("cnn_tiny", num_classes=10))
    assert "\n" not in str(info.value)
