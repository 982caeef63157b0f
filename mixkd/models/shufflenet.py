"""ShuffleNet V1 (g=3) and V2 (1×) for 32×32 input, as RepDistiller's `ShuffleV1` / `ShuffleV2`.

Both use a 1×1, stride-1 stem of 24 channels and no max-pool, so three stride-2 stages take 32×32 to
4×4. Channel shuffles and splits have no weights; they are plain functions here, which leaves the
state-dict keys exactly as in RepDistiller.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import MODELS
from .base import StagedNet
from .cifar_resnet import avg_pool_flat

_STEM = 24
_V1_WIDTHS, _V1_DEPTHS, _V1_GROUPS = (240, 480, 960), (4, 8, 4), 3
_V2_WIDTHS, _V2_DEPTHS, _V2_LAST = (116, 232, 464), (3, 7, 3), 1024  # the "1×" size


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g·c, H, W) → interleave the g groups' channels, so the next grouped conv mixes them."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    """Grouped 1×1, shuffle, depthwise 3×3, grouped 1×1. A stride-2 block concatenates an average-
    pooled shortcut, so its branch only produces `out_planes` = total width minus input width."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The first block's input is the 24-channel stem, too narrow to split into groups.
        self.in_groups = 1 if in_planes == _STEM else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.in_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.in_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(StagedNet):
    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        in_planes, layers = _STEM, []
        for width, n in zip(_V1_WIDTHS, _V1_DEPTHS):
            blocks = [ShuffleV1Block(in_planes, width - in_planes, 2, _V1_GROUPS)]
            blocks += [ShuffleV1Block(width, width, 1, _V1_GROUPS) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(in_planes, num_classes)

    def stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stages(self):
        return [self.layer1, self.layer2, self.layer3]

    def pool(self, h):
        return avg_pool_flat(h)

    def head(self, features):
        return self.linear(features)


class ShuffleV2Block(nn.Module):
    """Keep half the channels, transform the other half (1×1, depthwise 3×3, 1×1), concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        kept, out = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride 2, two branches over the full input (depthwise→1×1 and 1×1→depthwise→1×1), concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(StagedNet):
    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        in_channels, layers = _STEM, []
        for width, n in zip(_V2_WIDTHS, _V2_DEPTHS):
            layers.append(nn.Sequential(ShuffleV2Down(in_channels, width), *(ShuffleV2Block(width) for _ in range(n))))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(in_channels, _V2_LAST, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(_V2_LAST)
        self.linear = nn.Linear(_V2_LAST, num_classes)

    def stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stages(self):
        return [self.layer1, self.layer2, self.layer3]

    def pool(self, h):
        return avg_pool_flat(F.relu(self.bn2(self.conv2(h))))

    def head(self, features):
        return self.linear(features)


@MODELS.register()
def ShuffleV1(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return ShuffleNetV1(num_classes, in_chans)


@MODELS.register()
def ShuffleV2(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return ShuffleNetV2(num_classes, in_chans)
