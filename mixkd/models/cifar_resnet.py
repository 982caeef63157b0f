"""CIFAR ResNets (resnet8 … resnet110, resnet8x4, resnet32x4) as in RepDistiller's `resnet.py`.

Attribute names follow RepDistiller so its and mdistiller's teacher checkpoints load with strict
keys. The two helpers at the bottom are shared by the rest of the RepDistiller zoo.
"""

from contextlib import contextmanager

from torch import Tensor, nn
from torch.nn import functional as F

from . import MODELS
from .base import StagedNet


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.keep_preact, self.preact = False, None  # the residual sum before the ReLU, when asked (OFD, AB)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        out = out + residual
        self.preact = out if self.keep_preact else None
        return F.relu(out)


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, stride, downsample),
                         *(BasicBlock(planes, planes) for _ in range(1, blocks)))


class CifarResNet(StagedNet):
    """3×3 stem, three stages of n basic blocks (depth = 6n + 2), global average pool, `fc`."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_chans: int = 3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_layer(widths[0], widths[1], n, 1)
        self.layer2 = _make_layer(widths[1], widths[2], n, 2)
        self.layer3 = _make_layer(widths[2], widths[3], n, 2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_convs(self)

    def stem(self, x):
        return self.relu(self.bn1(self.conv1(x)))

    def stages(self):
        return [self.layer1, self.layer2, self.layer3]

    taps_preact = True

    @contextmanager
    def tapping(self, taps):
        """A stage's pre-activation is its last block's residual sum: those blocks keep it while tapping."""
        last = [stage[-1] for stage in self.stages()]
        for block in last:
            block.keep_preact = "preact" in taps
        try:
            yield
        finally:
            for block in last:
                block.keep_preact = False

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm before each stage's last ReLU (OFD reads its margins off them): the last block's bn2."""
        return [stage[-1].bn2 for stage in self.stages()]

    def preacts(self, stages):
        preacts = [stage[-1].preact for stage in self.stages()]
        for stage in self.stages():
            stage[-1].preact = None
        return preacts

    def pool(self, h):
        return avg_pool_flat(h)

    def head(self, features):
        return self.fc(features)


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)  # the "x4" nets: four times the channels


@MODELS.register()
def resnet8(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(8, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet14(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(14, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet20(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(20, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet32(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(32, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet44(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(44, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet56(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(56, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet110(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(110, _THIN, num_classes, in_chans)


@MODELS.register()
def resnet8x4(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(8, _WIDE, num_classes, in_chans)


@MODELS.register()
def resnet32x4(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return CifarResNet(32, _WIDE, num_classes, in_chans)


def avg_pool_flat(h: Tensor) -> Tensor:
    """Average over the whole map with one pooling window: the very op RepDistiller runs at 32×32
    (e.g. `AvgPool2d(8)` on the 8×8 map), so logits match bit for bit, yet any input size works."""
    return F.avg_pool2d(h, h.shape[-2:]).flatten(1)


def init_convs(model: nn.Module) -> None:
    """RepDistiller's conv init (He normal over fan-out, zero bias); BatchNorm keeps PyTorch's 1/0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
