"""MobileNetV2 at half width for 32×32 input: RepDistiller's `mobile_half` (its name `MobileNetV2`).

Expansion 6, width ×0.5 (but the 1280-wide last conv is kept), stride-2 stem. Attribute names
(`conv1`, `blocks[i][j].conv`, `conv2`, `classifier.0`) follow RepDistiller so its checkpoints load.
"""

from torch import Tensor, nn

from . import MODELS
from .base import StagedNet
from .cifar_resnet import avg_pool_flat, init_convs

_WIDTH = 0.5  # "half": every width but the last conv's is halved (rounded down)
_LAST_CHANNEL = 1280
# (expansion, channels at width 1, blocks, first stride) of the seven block groups.
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, linear 1×1 project; the expand conv is kept even at expansion 1."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(StagedNet):
    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        channels = int(32 * _WIDTH)
        self.conv1 = _conv_bn_relu(in_chans, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            out = int(c * _WIDTH)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(channels, out, stride, t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = _conv_bn_relu(channels, _LAST_CHANNEL, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(_LAST_CHANNEL, num_classes))
        init_convs(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def stem(self, x):
        return self.conv1(x)

    def stages(self):
        """The seven block groups; RepDistiller taps features after groups 1, 2, 4 and 6."""
        return self.blocks

    def pool(self, h):
        return avg_pool_flat(self.conv2(h))

    def head(self, features):
        return self.classifier(features)


@MODELS.register("MobileNetV2")
def mobile_half(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return MobileNetV2(num_classes, in_chans)
