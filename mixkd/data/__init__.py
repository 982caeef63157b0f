"""Dataset registry. A factory takes (root, **params) and returns a `Dataset` that hands out loaders.

Datasets that fit in memory are `InMemoryDataset`s: uint8 NCHW tensors that the device-resident
loader moves to the device once, so no epoch ever waits on Python-side decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
from torch import Tensor

from ..registry import Registry
from .loader import DeviceLoader
from .randaugment import RandAugment

# A dataset factory: (root, **params) → Dataset.
DATASETS: Registry = Registry("dataset", inputs=("root",))
# Dataset parameters that change how data is obtained, not what it is: kept out of run ids. `decode` (who decodes
# an image folder) changes pixels only in their last bits, like an engine's precision, and a run resumed with the
# other decoder is the same experiment; left out, it also keeps every image-folder run id as it was.
RUNTIME_PARAMS = frozenset({"download", "num_workers", "decode"})
# The smallest value of each parameter datasets share by name, checked when a study is read
MINIMUMS = {"num_classes": 2, "in_chans": 1, "img_size": 1, "train_size": 1, "test_size": 1, "val_size": 0,
            "split_seed": 0, "seed": 0, "num_workers": 0}
# Parameters that are a share of something, in (0, 1], checked when a study is read
FRACTIONS = ("eval_crop",)


def runtime_params(spec: dict) -> frozenset[str]:
    """RUNTIME_PARAMS of a resolved dataset spec. Where an image folder resizes bicubically, `decode` is no
    runtime detail: PIL chooses the order of its two resampling passes itself (Pillow 13: by the image's
    shape), and a cubic's overshoot, clipped between them, moves edge pixels by up to ~20 levels (on noise)
    against the device path's fixed order; so the decoder is part of such runs' ids."""
    bicubic = {spec.get("interpolation"), spec.get("eval_interpolation")} & {"bicubic", "random"}
    return RUNTIME_PARAMS - {"decode"} if bicubic else RUNTIME_PARAMS


class Dataset(Protocol):
    name: str
    num_classes: int
    in_chans: int
    img_size: int
    num_train_images: int  # what an epoch goes through: images/s and the progress bar count them
    train_targets: Tensor  # (num_train_images,) the training images' labels, by dataset index

    def train_loader(self, batch_size: int, device: torch.device, seed: int, augment: str | None = None,
                     random_erasing: float | None = None, shard: tuple[int, int] = (0, 1),
                     repeated_augment: int | None = None) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        """Batches (x, y, index): index is each sample's position in the training set. `augment`: a timm
        RandAugment string (`rand-m9-mstd0.5-inc1`) applied after the dataset's own augmentation;
        `random_erasing`: the probability of erasing a box of each normalised image (timm's); `shard` (rank,
        world): that rank's part of every batch of `batch_size`, for a run across devices; `repeated_augment`:
        each image that many times in a row, dealt round the ranks (`loader.epoch_order`)."""

    def eval_loader(self, batch_size: int, device: torch.device) -> Iterable[tuple[Tensor, Tensor]]: ...


@dataclass
class InMemoryDataset:
    """uint8 images (N, C, H, W) and int64 labels for the training split and the evaluation split."""

    name: str
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    eval_split: str = "test"  # "val" when a validation split was held out of train

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    @property
    def img_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_train_images(self) -> int:
        return len(self.train_y)

    @property
    def train_targets(self) -> Tensor:
        return self.train_y

    def train_loader(self, batch_size: int, device: torch.device, seed: int, augment: str | None = None,
                     random_erasing: float | None = None, shard: tuple[int, int] = (0, 1),
                     repeated_augment: int | None = None) -> DeviceLoader:
        return DeviceLoader(self.train_x, self.train_y, batch_size, self.mean, self.std, device=device,
                            shuffle=True, crop_padding=self.crop_padding, flip=self.flip, seed=seed, indexed=True,
                            randaugment=RandAugment.parse(augment) if augment else None,
                            random_erasing=random_erasing, shard=shard, repeats=repeated_augment)

    def eval_loader(self, batch_size: int, device: torch.device) -> DeviceLoader:
        return DeviceLoader(self.eval_x, self.eval_y, batch_size, self.mean, self.std, device=device)


def input_shape(num_classes: int, in_chans: int, img_size: int,
                train_images: int | Callable[[dict], int] | None = None,
                eval_images: int | Callable[[dict], int] | None = None):
    """Declare a dataset factory's (classes, channels, size) at its defaults, and how many training and
    evaluation images it holds (given its resolved parameters), so that models are sized (e.g. `mixkd list
    models --dataset cifar100`), sizes checked when a study is read and its time estimated, without reading
    any data."""

    def mark(factory):
        factory.shape, factory.train_images = (num_classes, in_chans, img_size), train_images
        factory.eval_images = eval_images
        return factory

    return mark


def declared_shape(spec: dict) -> tuple[int, int, int]:
    """(classes, channels, size) of a resolved dataset spec without reading it: its factory's declared
    shape, with any of those three the spec sets; (10, 3, 32) where the factory declares none."""
    declared = getattr(DATASETS.get(spec["name"]), "shape", (10, 3, 32))
    return tuple(spec.get(k, v) for k, v in zip(("num_classes", "in_chans", "img_size"), declared))


def declared_eval_images(spec: dict) -> int | None:
    """How many images a resolved dataset spec evaluates on: its `val_size` when it holds one out, else what
    its factory declares; None where it declares nothing."""
    if spec.get("val_size"):
        return spec["val_size"]
    held = getattr(DATASETS.get(spec["name"]), "eval_images", None)
    return held(spec) if callable(held) else held


def create_dataset(name: str, root: str | Path | None = None, **params) -> Dataset:
    return DATASETS.get(name, "dataset.name")(root=Path(root) if root is not None else None, **params)


from . import cifar, digits, imagefolder, synthetic  # noqa: E402,F401  (registration)

__all__ = ["DATASETS", "Dataset", "InMemoryDataset", "DeviceLoader", "create_dataset"]
