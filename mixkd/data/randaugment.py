"""timm's RandAugment (`rand-m9-mstd0.5-inc1`, DeiT's and TransMix's) as batched tensor ops on the device.

timm applies it image by image with PIL in DataLoader workers; mixkd's in-memory datasets live on the device
(`DeviceLoader`), where that would send every batch back to the host. Here each image still draws its own ops,
whether each applies, its magnitude and its sign, as timm's per-image draws do; every op then runs on the
whole batch at once and each image keeps the result of the op it drew, so no step waits on the host.

timm parses the config string (`rand_augment_transform`): its grammar, op sets, probability and magnitude noise
are timm's. The level → argument maps are timm's formulas, vectorised; the ops follow PIL's definitions
(ImageOps, ImageEnhance, Image.transform) on integer pixel values, rounding as PIL does, so colour ops equal
timm's output to ±1 (`tests/test_randaugment.py`). Geometric ops sample bilinearly with `grid_sample`, or
bicubically as PIL's Image.transform does (`_bicubic`: its kernel has a = -1, where torch's grid_sample has
-0.75 and PIL's resize -0.5), and fill what falls outside with the dataset's mean; they too equal timm's
output to ±1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MixkdError

SECTION = re.compile(r"^(t.+|(m|n|p|mstd|mmax|inc)\d.*)$")  # the sections timm's RandAugment string reads
LEVEL_DENOM = 10.0  # timm's magnitude scale: M10 is the strongest level
# op name → level (B,), sign (B,) ±1, hparams → argument (B,): timm's `LEVEL_TO_ARG`, per image
LEVELS: dict[str, Callable[[Tensor, Tensor, dict], Tensor]] = {
    "Rotate": lambda m, s, h: s * m / LEVEL_DENOM * 30.0,
    "ShearX": lambda m, s, h: s * m / LEVEL_DENOM * 0.3,
    "ShearY": lambda m, s, h: s * m / LEVEL_DENOM * 0.3,
    "TranslateXRel": lambda m, s, h: s * m / LEVEL_DENOM * h.get("translate_pct", 0.45),
    "TranslateYRel": lambda m, s, h: s * m / LEVEL_DENOM * h.get("translate_pct", 0.45),
    "Posterize": lambda m, s, h: (m / LEVEL_DENOM * 4).floor(),
    "PosterizeIncreasing": lambda m, s, h: 4 - (m / LEVEL_DENOM * 4).floor(),
    "Solarize": lambda m, s, h: (m / LEVEL_DENOM * 256).floor().clamp(max=256),
    "SolarizeIncreasing": lambda m, s, h: 256 - (m / LEVEL_DENOM * 256).floor().clamp(max=256),
    "SolarizeAdd": lambda m, s, h: (m / LEVEL_DENOM * 110).floor().clamp(max=128),
    **{name: (lambda m, s, h: m / LEVEL_DENOM * 1.8 + 0.1) for name in ("Color", "Contrast", "Brightness",
                                                                       "Sharpness")},
    **{f"{name}Increasing": (lambda m, s, h: (1.0 + s * m / LEVEL_DENOM * 0.9).clamp(min=0.1))
       for name in ("Color", "Contrast", "Brightness", "Sharpness")},
}


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL's Image.blend on uint8 values: d + f·(x - d) in float32, truncated and clipped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).floor().clamp(0, 255)


def _gray(x: Tensor) -> Tensor:
    """PIL's RGB → L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as (B, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).floor()


def autocontrast(x: Tensor, _=None) -> Tensor:
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1)
    stretched = (x.double() * scale.double() - lo.double() * scale.double()).floor().clamp(0, 255).float()
    return torch.where(hi > lo, stretched, x)


def equalize(x: Tensor, _=None) -> Tensor:
    """PIL's ImageOps.equalize per channel: lut[i] = (step // 2 + pixels below i) // step."""
    b, c, h, w = x.shape
    values = x.long().view(b, c, h * w)
    hist = torch.zeros(b, c, 256, device=x.device).scatter_add_(2, values, torch.ones_like(values, dtype=torch.float))
    last = torch.where(hist > 0, torch.arange(256, device=x.device), 0).amax(2, keepdim=True)
    step = ((h * w - hist.gather(2, last)) / 255).floor()
    below = hist.cumsum(2) - hist
    lut = ((step / 2).floor() + below).div(step.clamp(min=1)).floor().clamp(max=255)
    return torch.where(step.view(b, c, 1, 1) > 0, lut.gather(2, values).view(b, c, h, w), x)


def invert(x: Tensor, _=None) -> Tensor:
    return 255 - x


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    shift = (2.0 ** (8 - bits)).view(-1, 1, 1, 1)
    return (x / shift).floor() * shift


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 255 - x, x)


def solarize_add(x: Tensor, add: Tensor) -> Tensor:
    return torch.where(x < 128, (x + add.view(-1, 1, 1, 1)).clamp(max=255), x)


def color(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = (_gray(x).mean((1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(mean.expand_as(x), x, factor)


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13), which leaves the border as it is."""
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(x.shape[1], 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1]).round()
    return _blend(smooth, x, factor)


# PIL's affine ops as (B,) argument → (B, 2, 3) maps from an output pixel's position to where it samples the
# input, in pixel units (pixel i spans [i, i + 1]); rotation is about the centre, counter-clockwise
def _shear_x(a: Tensor, h: int, w: int) -> Tensor:
    return _affine(one=a.new_ones(a.shape), xy=a)


def _shear_y(a: Tensor, h: int, w: int) -> Tensor:
    return _affine(one=a.new_ones(a.shape), yx=a)


def _translate_x(a: Tensor, h: int, w: int) -> Tensor:
    return _affine(one=a.new_ones(a.shape), tx=a * w)


def _translate_y(a: Tensor, h: int, w: int) -> Tensor:
    return _affine(one=a.new_ones(a.shape), ty=a * h)


def _rotate(degrees: Tensor, h: int, w: int) -> Tensor:
    angle = -degrees * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    cx, cy = w / 2, h / 2
    return torch.stack([torch.stack([cos, sin, cx - cos * cx - sin * cy], 1),
                        torch.stack([-sin, cos, cy + sin * cx - cos * cy], 1)], 1)


def _affine(one: Tensor, xy: Tensor | None = None, yx: Tensor | None = None, tx: Tensor | None = None,
            ty: Tensor | None = None) -> Tensor:
    zero = torch.zeros_like(one)
    return torch.stack([torch.stack([one, zero if xy is None else xy, zero if tx is None else tx], 1),
                        torch.stack([zero if yx is None else yx, one, zero if ty is None else ty], 1)], 1)


COLOUR_OPS: dict[str, Callable[[Tensor, Tensor | None], Tensor]] = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
    "Posterize": posterize, "PosterizeIncreasing": posterize,
    "Solarize": solarize, "SolarizeIncreasing": solarize, "SolarizeAdd": solarize_add,
    "Color": color, "ColorIncreasing": color, "Contrast": contrast, "ContrastIncreasing": contrast,
    "Brightness": brightness, "BrightnessIncreasing": brightness,
    "Sharpness": sharpness, "SharpnessIncreasing": sharpness,
}
AFFINE_OPS: dict[str, Callable[[Tensor, int, int], Tensor]] = {
    "Rotate": _rotate, "ShearX": _shear_x, "ShearY": _shear_y,
    "TranslateXRel": _translate_x, "TranslateYRel": _translate_y,
}


def warp(x: Tensor, maps: Tensor, fill: Tensor, bicubic: Tensor) -> Tensor:
    """Each image resampled through its pixel-unit affine map (B, 2, 3): bilinear, or bicubic where `bicubic`;
    a pixel whose source lies outside the image gets `fill`, as PIL's Image.transform gives it."""
    b, c, h, w = x.shape
    to_unit = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], device=x.device)
    square = torch.cat([maps, torch.tensor([0.0, 0, 1], device=x.device).expand(b, 1, 3)], 1)
    theta = (to_unit @ square @ torch.linalg.inv(to_unit))[:, :2]
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(x, grid, "bilinear", "border", align_corners=False)
    if bicubic.any():
        out[bicubic] = _bicubic(x[bicubic], grid[bicubic])
    out = out.round().clamp(0, 255)
    inside = (grid.abs() <= 1).all(-1).unsqueeze(1)  # the source point, in [-1, 1]²: inside the image
    return torch.where(inside, out, fill.view(1, -1, 1, 1))


def _bicubic(x: Tensor, grid: Tensor) -> Tensor:
    """`x` sampled at `grid` (grid_sample's coordinates, align_corners=False) as PIL's Image.transform samples
    with BICUBIC: 4×4 neighbours, clamped at the border, weighed by the cubic convolution kernel with a = -1
    (Geometry.c's BICUBIC), which torch's grid_sample (a = -0.75) misses by up to 8 levels on texture."""
    b, c, h, w = x.shape
    px, py = ((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2  # pixel indices, centres whole
    x0, y0 = px.floor(), py.floor()
    flat, out = x.reshape(b, c, h * w), torch.zeros_like(x)
    for j in range(-1, 3):
        rows = (y0 + j).clamp(0, h - 1)
        wy = cubic_kernel(py - y0 - j)
        for i in range(-1, 3):
            at = (rows * w + (x0 + i).clamp(0, w - 1)).long().view(b, 1, h * w).expand(b, c, h * w)
            out += (wy * cubic_kernel(px - x0 - i)).unsqueeze(1) * flat.gather(2, at).view(b, c, h, w)
    return out


def cubic_kernel(d: Tensor, a: float = -1.0) -> Tensor:
    """The cubic convolution kernel (Keys) at distance d: a = -1 is PIL's Image.transform, -0.5 its resize."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = (((d - 5) * d + 8) * d - 4) * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


@dataclass(frozen=True)
class RandAugment:
    """A RandAugment policy, as timm reads its config string; `__call__` augments a batch of uint8 images."""

    config: str
    ops: tuple[str, ...]
    num_layers: int
    prob: float
    magnitude: float
    magnitude_std: float
    magnitude_max: float
    weights: tuple[float, ...] | None
    hparams: dict

    @classmethod
    def parse(cls, config: str, translate_pct: float = 0.45, interpolation: str = "random") -> "RandAugment":
        from timm.data.auto_augment import rand_augment_transform

        sections = config.split("-")[1:]
        unknown = [s for s in sections if not SECTION.match(s)]
        if unknown:  # timm skips a section without a digit silently
            raise MixkdError(f"augment {config!r}: unknown section {unknown[0]!r}; a timm RandAugment string is "
                             f"rand-<sections> of m<magnitude>, n<layers>, p<prob>, mstd<std>, mmax<max>, "
                             f"inc<0|1>, t<transforms>, e.g. 'rand-m9-mstd0.5-inc1'")
        try:
            policy = rand_augment_transform(config, {"translate_pct": translate_pct})
        except (AssertionError, ValueError, KeyError) as e:
            raise MixkdError(f"augment {config!r}: not a timm RandAugment string like 'rand-m9-mstd0.5-inc1' "
                             f"({e or 'unknown section'})") from None
        names = tuple(op.name for op in policy.ops)
        unknown = [n for n in names if n not in COLOUR_OPS and n not in AFFINE_OPS]
        if unknown:
            raise MixkdError(f"augment {config!r}: ops {', '.join(unknown)} have no device version; "
                             f"available: {', '.join(sorted({*COLOUR_OPS, *AFFINE_OPS}))}")
        first = policy.ops[0]
        weights = None if policy.choice_weights is None else tuple(map(float, policy.choice_weights))
        return cls(config, names, policy.num_layers, first.prob, float(first.magnitude), first.magnitude_std,
                   float(first.magnitude_max or LEVEL_DENOM), weights,
                   {"translate_pct": translate_pct, "interpolation": interpolation})

    def __call__(self, images: Tensor, fill: Tensor, generator: torch.Generator) -> Tensor:
        """`images` (B, C, H, W) uint8 → the same, each image through its own draws; `fill` (C,) in [0, 255]."""
        x, b, g = images.float(), len(images), generator
        device = images.device
        if self.weights is None:  # timm: ops drawn with replacement, unless weighted
            chosen = torch.randint(len(self.ops), (b, self.num_layers), device=device, generator=g)
        else:
            weights = torch.tensor(self.weights, device=device).expand(b, -1)
            chosen = torch.multinomial(weights, self.num_layers, replacement=False, generator=g)
        for layer in range(self.num_layers):
            applied = torch.rand(b, device=device, generator=g) <= self.prob
            level = self._levels(b, device, g)
            sign = torch.where(torch.rand(b, device=device, generator=g) > 0.5, -1.0, 1.0)
            bicubic = self._bicubic(b, device, g)
            x = self._layer(x, chosen[:, layer], applied, level, sign, bicubic, fill)
        return x.to(torch.uint8)

    def _levels(self, b: int, device, g: torch.Generator) -> Tensor:
        m, std = self.magnitude, self.magnitude_std
        if std == float("inf"):
            level = torch.rand(b, device=device, generator=g) * m
        elif std > 0:
            level = m + std * torch.randn(b, device=device, generator=g)
        else:
            level = torch.full((b,), m, device=device)
        return level.clamp(0, self.magnitude_max)

    def _bicubic(self, b: int, device, g: torch.Generator) -> Tensor:
        """timm draws bilinear or bicubic per op unless the recipe fixes one."""
        mode = self.hparams["interpolation"]
        if mode == "random":
            return torch.rand(b, device=device, generator=g) < 0.5
        return torch.full((b,), mode == "bicubic", device=device)

    def _layer(self, x: Tensor, op: Tensor, applied: Tensor, level: Tensor, sign: Tensor, bicubic: Tensor,
               fill: Tensor) -> Tensor:
        """One layer: each image through the op it drew, if it applies. On a GPU every op runs on the whole
        batch and each image keeps its own (no host sync); on the CPU, where a sync costs nothing, each op runs
        only on the images that drew it. Either way an image's result is the same."""
        if x.device.type != "cpu":
            return self._masked(x, op, applied, level, sign, bicubic, fill)
        out = x.clone()
        for k, name in enumerate(self.ops):
            idx = ((op == k) & applied).nonzero().squeeze(1)
            if len(idx):
                arg = LEVELS[name](level[idx], sign[idx], self.hparams) if name in LEVELS else None
                out[idx] = self._op(name, x[idx], arg, bicubic[idx], fill)
        return out

    def _masked(self, x: Tensor, op: Tensor, applied: Tensor, level: Tensor, sign: Tensor, bicubic: Tensor,
                fill: Tensor) -> Tensor:
        out, maps, moved = x, _affine(one=x.new_ones(len(x))), torch.zeros_like(applied)
        for k, name in enumerate(self.ops):
            mine = (op == k) & applied
            arg = LEVELS[name](level, sign, self.hparams) if name in LEVELS else None
            if name in AFFINE_OPS:  # the geometric ops as one resampling, each image through its own map
                maps = torch.where(mine.view(-1, 1, 1), AFFINE_OPS[name](arg, *x.shape[-2:]), maps)
                moved |= mine
            else:
                out = torch.where(mine.view(-1, 1, 1, 1), COLOUR_OPS[name](x, arg), out)
        return torch.where(moved.view(-1, 1, 1, 1), warp(x, maps, fill, bicubic), out)

    @staticmethod
    def _op(name: str, x: Tensor, arg: Tensor | None, bicubic: Tensor, fill: Tensor) -> Tensor:
        if name in AFFINE_OPS:
            return warp(x, AFFINE_OPS[name](arg, *x.shape[-2:]), fill, bicubic)
        return COLOUR_OPS[name](x, arg)
