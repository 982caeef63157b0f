"""The RepDistiller CIFAR zoo: sizes, the StagedNet contract, checkpoint layout and loading."""

from functools import lru_cache

import pytest
import torch
from torch import nn

from mixkd.errors import MixkdError
from mixkd.models import count_parameters, create_model
from mixkd.models.checkpoint import load_teacher_checkpoint

ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
       "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
       "ResNet18", "ResNet50", "MobileNetV2", "ShuffleV1", "ShuffleV2"]

# Millions of parameters at 100 classes, as reported by RepDistiller / CRD.
PARAMS_M = {"resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23,
            "resnet32x4": 7.43, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26, "vgg8": 3.97, "vgg13": 9.46,
            "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36}

# Entries in RepDistiller's state dicts, and spot keys with their shapes at 100 classes.
REFERENCE_SIZES = {"resnet20": 128, "wrn_16_2": 83, "vgg8": 37, "MobileNetV2": 320, "ShuffleV1": 296,
                   "ShuffleV2": 338, "ResNet50": 320}
REFERENCE_KEYS = {
    "resnet20": {"conv1.weight": (16, 3, 3, 3), "layer1.0.conv1.weight": (16, 16, 3, 3),
                 "layer2.0.downsample.0.weight": (32, 16, 1, 1), "layer3.2.bn2.running_var": (64,),
                 "fc.weight": (100, 64)},
    "wrn_16_2": {"conv1.weight": (16, 3, 3, 3), "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
                 "block3.layer.1.conv2.weight": (128, 128, 3, 3), "bn1.weight": (128,), "fc.weight": (100, 128)},
    "vgg8": {"block0.0.weight": (64, 3, 3, 3), "block0.1.running_mean": (64,), "block4.0.bias": (512,),
             "classifier.weight": (100, 512)},
    "MobileNetV2": {"conv1.0.weight": (16, 3, 3, 3), "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
                    "blocks.6.0.conv.6.weight": (160, 480, 1, 1), "conv2.0.weight": (1280, 160, 1, 1),
                    "classifier.0.weight": (100, 1280)},
    "ShuffleV1": {"conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (54, 24, 1, 1),
                  "layer2.0.conv1.weight": (60, 80, 1, 1), "linear.weight": (100, 960)},
    "ShuffleV2": {"layer1.0.conv5.weight": (58, 58, 1, 1), "layer1.3.bn3.weight": (58,),
                  "conv2.weight": (1024, 464, 1, 1), "linear.weight": (100, 1024)},
    "ResNet50": {"layer1.0.shortcut.0.weight": (256, 64, 1, 1), "layer4.2.conv3.weight": (2048, 512, 1, 1),
                 "linear.weight": (100, 2048)},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batches of two are far faster on one thread, and a busy 2-core machine makes two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _model.cache_clear()  # free the zoo (~100M parameters) for the rest of the session


@lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    """One instance per architecture, shared by the tests: building the big ones takes most of the time.

    Left in train mode: BatchNorm then normalises with batch statistics, so activations stay O(1) at
    init (in eval mode a fresh BN is the identity, and e.g. ShuffleV2's logits are little but the bias).
    """
    torch.manual_seed(0)
    return create_model(name, num_classes=100)


def _head(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", PARAMS_M)
def test_parameter_count_matches_repdistiller(name):
    assert count_parameters(_model(name)) / 1e6 == pytest.approx(PARAMS_M[name], abs=0.01)


@pytest.mark.parametrize("name", REFERENCE_KEYS)
def test_state_dict_keys_follow_repdistiller(name):
    state = _model(name).state_dict()
    assert len(state) == REFERENCE_SIZES[name]
    assert {k: tuple(state[k].shape) for k in REFERENCE_KEYS[name] if k in state} == REFERENCE_KEYS[name]


@pytest.mark.parametrize("name", ZOO)
@torch.no_grad()
def test_forward_features_and_mixing(name):
    model = _model(name)
    logits, feats = model(X, return_features=True)
    assert logits.shape == (2, 100)
    assert torch.equal(logits, model(X))
    assert len(feats.stages) == model.num_stages >= 3
    assert feats.pooled.shape == (2, _head(model).in_features)
    for i in range(model.num_stages + 1):  # == num_stages mixes the last stage's output
        assert torch.equal(model(X, mix_at=i, mix_fn=lambda h: h), logits)
        assert not torch.allclose(model(X, mix_at=i, mix_fn=torch.zeros_like), logits)
    for stage in (-1, model.num_stages + 1):  # a stage it lacks: never silently the clean forward
        with pytest.raises(ValueError, match=f"mixes at stages 0..{model.num_stages}"):
            model(X, mix_at=stage, mix_fn=torch.zeros_like)


@pytest.mark.parametrize("name", ZOO)
@torch.no_grad()
def test_grayscale_tiny_input(name):
    """`in_chans` reaches the first conv, and no fixed-size pooling breaks on 8×8 digits."""
    model = create_model(name, num_classes=10, in_chans=1, img_size=8).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def _trained_resnet8(num_classes=100) -> nn.Module:
    model = create_model("resnet8", num_classes=num_classes)
    model.train()(torch.randn(4, 3, 32, 32))  # move BatchNorm statistics off their defaults
    return model.eval()


@pytest.mark.parametrize("wrap", [lambda s: {"model": s, "epoch": 240, "accuracy": torch.tensor(70.0)},
                                  lambda s: {"module." + k: v for k, v in s.items()},
                                  lambda s: {"model": {"module." + k: v for k, v in s.items()}}],
                         ids=["repdistiller", "dataparallel", "repdistiller-dataparallel"])
@torch.no_grad()
def test_checkpoint_round_trip(tmp_path, wrap):
    teacher = _trained_resnet8()
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(wrap(teacher.state_dict()), path)
    fresh = create_model("resnet8", num_classes=100).eval()
    load_teacher_checkpoint(fresh, path)
    assert torch.equal(fresh(X), teacher(X))


def _load_error(model: nn.Module, path) -> str:
    with pytest.raises(MixkdError) as info:
        load_teacher_checkpoint(model, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_checkpoint_of_another_depth_is_refused(tmp_path):
    path = tmp_path / "resnet20.pth"
    torch.save({"model": create_model("resnet20", num_classes=100).state_dict()}, path)
    message = _load_error(create_model("resnet32", num_classes=100), path)
    assert "CifarResNet" in message and "missing keys (first: layer1.3." in message


def test_checkpoint_with_other_class_count_is_refused_and_model_untouched(tmp_path):
    path = tmp_path / "cifar10.pth"
    torch.save({"model": _trained_resnet8(num_classes=10).state_dict()}, path)
    model = create_model("resnet8", num_classes=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = _load_error(model, path)
    assert "fc.weight: checkpoint (10, 64) vs model (100, 64)" in message and "missing" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_or_foreign_checkpoint_file(tmp_path):
    model = create_model("resnet8", num_classes=100)
    assert "not found" in _load_error(model, tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "not a state dict" in _load_error(model, tmp_path / "list.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    assert "cannot read" in _load_error(model, tmp_path / "notes.pth")


# ---- feature taps for distillation methods ----------------------------------------------------------------------

TAPPED = {  # the reference zoo's F0 (stem) and F1.. (maps) at 32×32, channels and size
    "resnet20": ((16, 32), [(16, 32), (32, 16), (64, 8)]),
    "resnet8x4": ((32, 32), [(64, 32), (128, 16), (256, 8)]),
    "wrn_16_2": ((16, 32), [(32, 32), (64, 16), (128, 8)]),
    "wrn_40_1": ((16, 32), [(16, 32), (32, 16), (64, 8)]),
    "vgg8": ((64, 32), [(128, 16), (256, 8), (512, 4), (512, 4)]),
}


@pytest.mark.parametrize("name", sorted(TAPPED))
def test_taps_give_the_reference_zoos_stem_maps_and_preactivations(name):
    model = create_model(name, num_classes=100, in_chans=3, img_size=32).train()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x, return_features=True)[1]
    assert plain.stem is None and plain.maps is None and plain.preact is None  # only what is asked for
    logits, f = model(x, return_features=True, taps=frozenset({"stem", "maps", "preact"}))
    (c0, h0), stages = TAPPED[name]
    assert tuple(f.stem.shape) == (2, c0, h0, h0)
    assert [tuple(m.shape) for m in f.maps] == [(2, c, h, h) for c, h in stages]
    assert [tuple(p.shape) for p in f.preact] == [(2, c, h, h) for c, h in stages]
    assert (torch.cat([m.flatten() for m in f.maps]) >= 0).all() or name.startswith("wrn")  # post-ReLU maps
    assert any((p < 0).any() for p in f.preact)  # before the nonlinearity
    model.eval()
    torch.testing.assert_close(model(x), model(x, return_features=True, taps=frozenset({"preact"}))[0])


def test_tapping_wrn_preactivations_updates_no_running_statistics_twice():
    model = create_model("wrn_16_2", num_classes=10, in_chans=3, img_size=32).train()
    x = torch.randn(4, 3, 32, 32)
    model(x)
    once = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    fresh = create_model("wrn_16_2", num_classes=10, in_chans=3, img_size=32).train()
    fresh.load_state_dict(model.state_dict())
    model(x)
    fresh(x, return_features=True, taps=frozenset({"preact"}))
    for key, value in fresh.state_dict().items():
        if key in once:
            torch.testing.assert_close(value, model.state_dict()[key], msg=key)


def test_models_without_preactivation_taps_say_so():
    model = create_model("cnn_tiny", num_classes=10, in_chans=3, img_size=32)
    assert not model.taps_preact
    with pytest.raises(NotImplementedError, match="no pre-activation features"):
        model(torch.randn(1, 3, 32, 32), return_features=True, taps=frozenset({"preact"}))
