"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2) as in RepDistiller's `wrn.py`.

Pre-activation blocks: each stage's output is a raw sum, so the final BN + ReLU (`bn1`, `relu`) run
in `pool`, just before averaging, as in the reference. Attribute names (`block1.layer.0`,
`convShortcut`) follow RepDistiller so its checkpoints load with strict keys.
"""

from torch import Tensor, nn
from torch.nn import functional as F

from . import MODELS
from .base import StagedNet
from .cifar_resnet import avg_pool_flat, init_convs


class BasicBlock(nn.Module):
    """BN-ReLU-conv ×2. When the width changes, the shortcut is a 1×1 conv of the *activated* input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut = None if in_planes == out_planes else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return (x if self.convShortcut is None else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):
    """Only a wrapper around `layer`; it exists so checkpoint keys read `block1.layer.0...`."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                stride if i == 0 else 1) for i in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(StagedNet):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_chans: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        c = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, c[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, c[0], c[1], 1)
        self.block2 = NetworkBlock(n, c[1], c[2], 2)
        self.block3 = NetworkBlock(n, c[2], c[3], 2)
        self.bn1 = nn.BatchNorm2d(c[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(c[3], num_classes)
        init_convs(self)
        nn.init.zeros_(self.fc.bias)  # as the reference; its weight keeps PyTorch's default

    def stem(self, x):
        return self.conv1(x)

    def stages(self):
        return [self.block1, self.block2, self.block3]

    taps_preact = True

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm before each stage's map is activated (OFD reads its margins off them): the next block's
        first BN, or the final one."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def preacts(self, stages):
        """Pre-activation blocks: a stage's pre-activation is the next BN applied to its output (the next block's
        first BN, or the final one), as the references tap it, with that BN's own statistics (batch ones in
        training) but momentum 0 here, so tapping does not update its running statistics a second time (the
        references do; mixkd does not follow them there)."""
        return [F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, 0.0, bn.eps)
                for h, bn in zip(stages, self.bn_before_relu())]

    def pool(self, h):
        return avg_pool_flat(self.relu(self.bn1(h)))

    def head(self, features):
        return self.fc(features)


@MODELS.register()
def wrn_16_1(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return WideResNet(16, 1, num_classes, in_chans)


@MODELS.register()
def wrn_16_2(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return WideResNet(16, 2, num_classes, in_chans)


@MODELS.register()
def wrn_40_1(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return WideResNet(40, 1, num_classes, in_chans)


@MODELS.register()
def wrn_40_2(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return WideResNet(40, 2, num_classes, in_chans)
