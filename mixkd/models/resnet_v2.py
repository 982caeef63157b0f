"""ImageNet-style ResNet18 / ResNet50 adapted to 32×32 input, as in RepDistiller's `resnetv2.py`.

The stem is a single stride-1 3×3 conv (no max-pool), so four stages run at 32, 16, 8 and 4 pixels.
Attribute names (`shortcut`, `linear`) follow RepDistiller so its checkpoints load with strict keys.
"""

from torch import Tensor, nn
from torch.nn import functional as F

from . import MODELS
from .base import StagedNet
from .cifar_resnet import init_convs


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential, as in the reference) unless the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetV2(StagedNet):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, int, int, int],
                 num_classes: int, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes, layers = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        init_convs(self)

    def stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stages(self):
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    # pool: the base class's adaptive average pool, as the reference's `AdaptiveAvgPool2d((1, 1))`.

    def head(self, features):
        return self.linear(features)


@MODELS.register()
def ResNet18(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return ResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, in_chans)


@MODELS.register()
def ResNet50(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return ResNetV2(Bottleneck, (3, 4, 6, 3), num_classes, in_chans)
