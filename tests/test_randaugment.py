"""RandAugment and random erasing on the device: each RandAugment op equals timm's (PIL) to ±1 at the same
argument, and whole policies, and erasing, draw the distribution timm's draw (two-sample KS tests)."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import ks_2samp
from timm.data import auto_augment
from timm.data.random_erasing import RandomErasing

from mixkd.data.erasing import random_erasing
from mixkd.data.randaugment import AFFINE_OPS, COLOUR_OPS, LEVELS, RandAugment, _bicubic, warp
from mixkd.errors import MixkdError

FILL = (124, 116, 104)  # DeiT's: ImageNet's mean pixel


def smooth_images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Photo-like uint8 images: upsampled coarse noise plus grain (flat noise would hide interpolation errors)."""
    rng = np.random.default_rng(seed)
    coarse = torch.tensor(rng.integers(0, 256, (n, channels, 8, 8)), dtype=torch.float32)
    grain = torch.tensor(rng.normal(0, 8, (n, channels, size, size)), dtype=torch.float32)
    return (F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) + grain).clamp(0, 255).round()


def pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8))


@pytest.mark.parametrize("bicubic, tolerance", [(False, 1), (True, 1)])
@pytest.mark.parametrize("name", sorted({*COLOUR_OPS, *AFFINE_OPS}))
def test_each_op_equals_timms_at_the_same_argument(name, bicubic, tolerance):
    if bicubic and name not in AFFINE_OPS:
        pytest.skip("only the geometric ops interpolate")
    x = smooth_images(8)
    for level, sign in ((3.0, 1.0), (9.0, -1.0), (10.0, 1.0)):
        arg = LEVELS[name](torch.full((8,), level), torch.full((8,), sign), {}) if name in LEVELS else None
        if name in AFFINE_OPS:
            ours = warp(x, AFFINE_OPS[name](arg, 32, 32), torch.tensor(FILL, dtype=torch.float),
                        torch.full((8,), bicubic))
        else:
            ours = COLOUR_OPS[name](x, arg)
        resample = Image.BICUBIC if bicubic else Image.BILINEAR
        for i in range(8):
            args = () if arg is None else (int(arg[i]) if "ize" in name else arg[i].item(),)  # posterize, solarize
            if args == (0,) and "Posterize" in name:
                theirs = Image.new("RGB", (32, 32))  # 0 bits: black (Pillow ≥ 11 refuses 0; earlier ones gave this)
            else:
                theirs = auto_augment.NAME_TO_OP[name](pil(x[i]), *args, fillcolor=FILL, resample=resample)
            expected = torch.tensor(np.asarray(theirs)).permute(2, 0, 1).float()
            assert (ours[i] - expected).abs().max() <= tolerance, (name, level, sign, i)


def test_bicubic_is_pils_kernel_a_minus_one_which_torchs_grid_sample_misses_on_texture():
    """PIL's Image.transform weighs 4×4 neighbours with a = -1 (not resize's -0.5); torch's grid_sample has
    -0.75, up to 8 levels away. Each image is bicubic or bilinear as drawn, in one batch."""
    x = smooth_images(8)
    maps = AFFINE_OPS["Rotate"](torch.full((8,), 17.0), 32, 32)
    fill = torch.tensor(FILL, dtype=torch.float)
    chosen = torch.arange(8) % 2 == 0
    ours = warp(x, maps, fill, chosen)
    for i in range(8):
        theirs = pil(x[i]).rotate(17.0, Image.BICUBIC if chosen[i] else Image.BILINEAR, fillcolor=FILL)
        assert (ours[i] - torch.tensor(np.asarray(theirs)).permute(2, 0, 1)).abs().max() <= 1
    grid = F.affine_grid(torch.tensor([[[0.9, 0.2, 0.05], [-0.1, 1.1, 0.0]]]).expand(8, 2, 3), [8, 3, 32, 32],
                         align_corners=False)
    torch_cubic = F.grid_sample(x, grid, "bicubic", "border", align_corners=False).round().clamp(0, 255)
    assert (torch_cubic - _bicubic(x, grid).round().clamp(0, 255)).abs().max() > 3


@pytest.fixture(autouse=True)
def posterize_to_black(monkeypatch):
    """timm's posterize keeps 0 bits at the strongest levels (PosterizeIncreasing at 10: M9 plus noise, clipped;
    Posterize below 2.5), which Pillow ≥ 11 refuses; earlier Pillows, and mixkd, give a black image."""
    posterize = auto_augment.posterize
    for name in ("Posterize", "PosterizeIncreasing"):
        monkeypatch.setitem(auto_augment.NAME_TO_OP, name, lambda img, bits, **kw: Image.new(img.mode, img.size)
                            if bits == 0 else posterize(img, bits))


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-mstd0", "rand-m9-mstd101-inc0"])
def test_a_policy_draws_timms_distribution(config):
    n = 1500
    image = smooth_images(1, seed=3).to(torch.uint8)
    ours = RandAugment.parse(config)(image.expand(n, -1, -1, -1), torch.tensor(FILL, dtype=torch.float),
                                     torch.Generator().manual_seed(0)).float()
    random.seed(0)
    np.random.seed(0)
    policy = auto_augment.rand_augment_transform(config, {"translate_pct": 0.45, "img_mean": FILL})
    theirs = torch.stack([torch.tensor(np.asarray(policy(pil(image[0])))).permute(2, 0, 1)
                          for _ in range(n)]).float()
    reference = image.float()
    for statistic in (lambda a: (a - reference).abs().mean((1, 2, 3)), lambda a: a.mean((1, 2, 3)),
                      lambda a: a.std((1, 2, 3)), lambda a: (a == reference).all(1).float().mean((1, 2))):
        assert ks_2samp(statistic(ours).numpy(), statistic(theirs).numpy()).pvalue > 1e-3


def test_the_gpus_whole_batch_path_gives_each_image_what_the_cpus_per_op_path_gives():
    policy = RandAugment.parse("rand-m9-mstd0.5-inc1")
    x = smooth_images(64)
    g = torch.Generator().manual_seed(1)
    op, applied = torch.randint(len(policy.ops), (64,), generator=g), torch.rand(64, generator=g) < 0.8
    level, sign = (9 + torch.randn(64, generator=g)).clamp(0, 10), torch.where(torch.rand(64, generator=g) > .5, -1., 1.)
    bicubic, fill = torch.rand(64, generator=g) < 0.5, torch.tensor(FILL, dtype=torch.float)
    args = (x, op, applied, level, sign, bicubic, fill)
    torch.testing.assert_close(policy._masked(*args), policy._layer(*args), rtol=0, atol=0)


def test_same_seed_same_images_and_grey_images_work():
    policy = RandAugment.parse("rand-m9-mstd0.5-inc1")
    grey = smooth_images(32, channels=1).to(torch.uint8)
    a, b = (policy(grey, torch.tensor([128.0]), torch.Generator().manual_seed(7)) for _ in range(2))
    assert a.dtype == torch.uint8 and a.shape == grey.shape and torch.equal(a, b)
    assert not torch.equal(a, grey)
    assert torch.equal(COLOUR_OPS["Color"](grey.float(), torch.full((32,), 0.3)), grey.float())  # no colour


@pytest.mark.parametrize("config, says", [("rand-x9", "unknown section 'x9'"),
                                          ("augmix-m5", "not a timm RandAugment string"),
                                          ("rand-m9-t3a", "no device version")])
def test_a_bad_policy_is_one_line(config, says):
    with pytest.raises(MixkdError, match=says) as e:
        RandAugment.parse(config)
    assert "\n" not in str(e.value)


def test_random_erasing_draws_timms_boxes():
    """Box area, height, position and noise as timm's RandomErasing(probability, mode='pixel') draws them."""
    n, p = 3000, 0.6
    ours = random_erasing(torch.zeros(n, 3, 24, 32), p, torch.Generator().manual_seed(0))
    random.seed(0)
    torch.manual_seed(0)
    theirs = RandomErasing(p, mode="pixel", device="cpu")(torch.zeros(n, 3, 24, 32))

    def boxes(x):
        erased = x.ne(0).any(1)  # (n, h, w)
        rows, cols = erased.any(2).float(), erased.any(1).float()
        return {"area": erased.float().sum((1, 2)), "height": rows.sum(1), "width": cols.sum(1),
                "top": torch.where(rows.any(1), rows.argmax(1).float(), -1.0)}

    a, b = boxes(ours), boxes(theirs)
    assert abs(a["area"].gt(0).float().mean() - p) < 0.03 and abs(b["area"].gt(0).float().mean() - p) < 0.03
    for key in a:
        assert ks_2samp(a[key].numpy(), b[key].numpy()).pvalue > 1e-3, key
    noise = ours[ours != 0]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
