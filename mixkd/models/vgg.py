"""VGG8/11/13/16/19 with BatchNorm for 32×32 input, as RepDistiller's `vgg*_bn` (its `vgg8` … `vgg19`).

No FC head: five conv blocks, global average pool, one Linear called `classifier`. Each stage is
one `blockN`. RepDistiller's blocks are Sequential(conv, bn, relu, …, conv, bn), applying the last
ReLU and the max-pool that follows outside; here both are appended to the block instead. Having no
weights they add no state-dict keys, and the conv/bn indices stay RepDistiller's, so its checkpoints load.
"""

from contextlib import contextmanager

from torch import nn

from . import MODELS
from .base import StagedNet
from .cifar_resnet import init_convs

_CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: list[int], in_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class VGG(StagedNet):
    def __init__(self, cfg: list[list[int]], num_classes: int, in_chans: int = 3, img_size: int = 32):
        super().__init__()
        # RepDistiller max-pools after blocks 0-2, and after block 3 only for 64×64 input.
        pools = (True, True, True, img_size == 64, False)
        blocks, channels = [], in_chans
        for widths, pool in zip(cfg, pools):
            blocks.append(_block(widths, channels, pool))
            channels = widths[-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.classifier = nn.Linear(channels, num_classes)
        init_convs(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def stages(self):
        return [self.block0, self.block1, self.block2, self.block3, self.block4]

    taps_preact = True

    @contextmanager
    def tapping(self, taps):
        """The references tap each block before its max-pool and count the first block's output as F0, the stem
        (`stem`, `maps`), and tap blocks 1-4 at their last BN, before the ReLU (`preact`; cloned, as that ReLU
        works in place): hooks record them while tapping."""
        self._taps: dict[str, list] = {"maps": [], "preact": []}
        hooks = []
        for i, stage in enumerate(self.stages()):
            relus = [m for m in stage if isinstance(m, nn.ReLU)]
            bns = [m for m in stage if isinstance(m, nn.BatchNorm2d)]
            if taps & {"stem", "maps"}:
                hooks.append(relus[-1].register_forward_hook(lambda m, i, o: self._taps["maps"].append(o)))
            if "preact" in taps and i > 0:
                hooks.append(bns[-1].register_forward_hook(lambda m, i, o: self._taps["preact"].append(o.clone())))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of blocks 1-4, before their ReLU (OFD reads its margins off them)."""
        return [[m for m in stage if isinstance(m, nn.BatchNorm2d)][-1] for stage in self.stages()[1:]]

    def stem_map(self, stem):
        return self._taps["maps"][0]

    def maps(self, stages):
        return self._taps["maps"][1:]

    def preacts(self, stages):
        return self._taps["preact"]

    # pool: the base class's adaptive average pool, as the reference's `AdaptiveAvgPool2d((1, 1))`.

    def head(self, features):
        return self.classifier(features)


@MODELS.register()
def vgg8(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return VGG(_CFGS["vgg8"], num_classes, in_chans, img_size)


@MODELS.register()
def vgg11(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return VGG(_CFGS["vgg11"], num_classes, in_chans, img_size)


@MODELS.register()
def vgg13(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return VGG(_CFGS["vgg13"], num_classes, in_chans, img_size)


@MODELS.register()
def vgg16(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return VGG(_CFGS["vgg16"], num_classes, in_chans, img_size)


@MODELS.register()
def vgg19(num_classes: int, in_chans: int = 3, img_size: int = 32, **_):
    return VGG(_CFGS["vgg19"], num_classes, in_chans, img_size)
