import copy

import pytest
import timm
import torch

from mixkd.errors import MixkdError
from mixkd.models import create_model
from mixkd.models.timm_models import TimmNet

TINY_VIT = dict(patch_size=4, depth=2, embed_dim=32, num_heads=2)  # 32×32 → 8×8 = 64 patch tokens


def tiny_vit(**kw) -> TimmNet:
    torch.manual_seed(0)
    return create_model("timm/vit_tiny_patch16_224", num_classes=10, img_size=32, **{**TINY_VIT, **kw}).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 2, "global_pool": "avg"}])
def test_vit_logits_equal_timm_and_stages(x, kw):
    net = tiny_vit(**kw)
    tokens = 64 + net.timm_model.num_prefix_tokens
    with torch.no_grad():
        logits, feats = net(x, return_features=True)
        assert torch.equal(logits, net.timm_model(x))
        assert net.num_stages == 2 and [tuple(h.shape) for h in feats.stages] == [(2, tokens, 32)] * 2
        assert feats.pooled.shape == (2, 32)
        assert torch.equal(net.timm_model.forward_head(net.timm_model.forward_features(x), pre_logits=True),
                           feats.pooled)
        for i in range(net.num_stages + 1):  # mixing with the identity changes nothing, in front of any stage
            assert torch.equal(net(x, mix_at=i, mix_fn=lambda h: h), logits)


def test_cnn_logits_equal_timm(x):
    torch.manual_seed(0)
    net = create_model("timm/resnet18", num_classes=10, img_size=32, drop_rate=0.5).eval()
    with torch.no_grad():
        logits, feats = net(x, return_features=True)
        assert torch.equal(logits, net.timm_model(x))
        assert net.num_stages == 1 and feats.stages[0].shape == (2, 512, 1, 1) and feats.pooled.shape == (2, 512)
        assert torch.equal(net(x, mix_at=1, mix_fn=lambda h: h), logits)
    assert net.train().timm_model.training  # timm's head reads the top-level flag for its F.dropout


@pytest.mark.parametrize("name, kw", [("vit_tiny_patch16_224", TINY_VIT), ("resnet18", {})],
                         ids=["vit", "cnn"])
def test_timm_state_dicts_load_both_ways_with_equal_logits(x, name, kw):
    """The timm model is a registered child; state-dict hooks keep timm's checkpoint layout, BatchNorm's
    running statistics and module versions included."""
    torch.manual_seed(1)
    plain = timm.create_model(name, num_classes=10, **({"img_size": 32} if kw else {}), **kw)
    with torch.no_grad():  # running statistics that are not a fresh BatchNorm's, so that loading them shows
        plain.train()(torch.randn(4, 3, 32, 32))
    plain.eval()
    net = create_model(f"timm/{name}", num_classes=10, img_size=32, **kw).eval()
    assert list(net.state_dict()) == list(plain.state_dict())  # timm's keys, in timm's order
    assert set(net.state_dict()._metadata) == set(plain.state_dict()._metadata)
    net.load_state_dict(plain.state_dict())  # timm → mixkd, strictly
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
    torch.manual_seed(2)
    back = timm.create_model(name, num_classes=10, **({"img_size": 32} if kw else {}), **kw).eval()
    back.load_state_dict(net.state_dict())  # mixkd → timm, strictly
    with torch.no_grad():
        assert torch.equal(back(x), plain(x))
    twin = copy.deepcopy(net)
    twin.load_state_dict(net.state_dict(), assign=True)
    with torch.no_grad():
        assert torch.equal(twin(x), plain(x))
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "extra"'):
        net.load_state_dict({**plain.state_dict(), "extra": torch.zeros(1)})
    missing = dict(plain.state_dict())
    missing.pop("head.weight" if kw else "fc.weight")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "(head|fc)\.weight"'):
        net.load_state_dict(missing)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(MixkdError, match="did you mean .*vit_tiny_patch16_224"):
        create_model("timm/vit_tiny_patch16_24", num_classes=10)


def test_pretrained_offline_is_one_line_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))  # and never find cached weights
    with pytest.raises(MixkdError, match="could not be downloaded.*pretrained: false") as info:
        create_model("timm/resnet18", num_classes=10, pretrained=True)
    assert "\n" not in str(info.value)
