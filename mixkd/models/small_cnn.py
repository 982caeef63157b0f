"""Small CNNs for tiny images (digits 8×8, tests): teachers and students that train in seconds on a CPU."""

from torch import nn

from . import MODELS
from .base import StagedNet


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class SmallCNN(StagedNet):
    """`drop_rate`: dropout before the classifier, the one stochastic layer a quick study can switch on."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        chans = (in_chans, *widths)
        # Pool after every stage but the last: 8×8 digits end at 2×2 with three stages.
        self.layers = nn.ModuleList(_block(chans[i], chans[i + 1], pool=i < len(widths) - 1)
                                    for i in range(len(widths)))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(widths[-1], num_classes)

    def stages(self):
        return self.layers

    def head(self, features):
        return self.fc(self.drop(features))


@MODELS.register()
def cnn_tiny(num_classes: int, in_chans: int = 3, drop_rate: float = 0.0, **_):
    """Student-sized: ~3k parameters at 10 classes."""
    return SmallCNN((8, 16, 16), num_classes, in_chans, drop_rate)


@MODELS.register()
def cnn_small(num_classes: int, in_chans: int = 3, drop_rate: float = 0.0, **_):
    return SmallCNN((16, 32, 32), num_classes, in_chans, drop_rate)


@MODELS.register()
def cnn_wide(num_classes: int, in_chans: int = 3, drop_rate: float = 0.0, **_):
    """Teacher-sized: ~80k parameters at 10 classes."""
    return SmallCNN((32, 64, 96), num_classes, in_chans, drop_rate)
