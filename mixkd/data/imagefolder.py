"""ImageNet-style folders (`<root>/train/<class>/*`, `<root>/val/<class>/*`) through torchvision.

Too big for the device-resident loader, so images are decoded by DataLoader workers with the standard
ImageNet recipe: RandomResizedCrop + flip for training, resize to img_size/0.875 + centre crop for
evaluation, both normalised with the ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ..errors import MixkdError
from . import DATASETS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _ToDevice:
    """A DataLoader whose batches arrive on `device` (asynchronously from pinned memory on CUDA)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device):
        self.loader, self.device = loader, device
        self.generator = loader.generator  # shuffling and worker seeds: checkpointed to resume a run

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for batch in self.loader:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)


class _Indexed(torch.utils.data.Dataset):
    """A dataset whose items also say their index: (image, label, index)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (*self.dataset[i], i)


class ImageFolderDataset:
    """Implements the `Dataset` protocol; class indices follow the sorted folder names of train/."""

    name, in_chans = "imagefolder", 3

    def __init__(self, root: Path, img_size: int = 224, num_workers: int = 4):
        from torchvision import datasets, transforms as T

        splits = {split: root / split for split in ("train", "val")}
        for path in splits.values():
            if not path.is_dir():
                raise MixkdError(f"imagefolder: {path} is not a folder; the data root must hold train/<class>/* "
                                 f"and val/<class>/* (pass --data-root)")
        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.train = datasets.ImageFolder(str(splits["train"]), T.Compose([
            T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
        self.val = datasets.ImageFolder(str(splits["val"]), T.Compose([
            T.Resize(round(img_size / 0.875)), T.CenterCrop(img_size), T.ToTensor(), normalize]))
        if self.val.classes != self.train.classes:
            missing = sorted(set(self.train.classes) ^ set(self.val.classes))
            raise MixkdError(f"imagefolder: train/ and val/ under {root} hold different classes "
                             f"(only in one: {', '.join(missing[:5])})")
        self.img_size, self.num_workers = img_size, num_workers
        self.num_classes, self.num_train_images = len(self.train.classes), len(self.train)
        self.train_targets = torch.as_tensor(self.train.targets)

    def _loader(self, ds, batch_size: int, device, generator: torch.Generator | None) -> _ToDevice:
        device = torch.device(device)
        return _ToDevice(torch.utils.data.DataLoader(
            ds, batch_size, shuffle=generator is not None, generator=generator, num_workers=self.num_workers,
            pin_memory=device.type == "cuda", persistent_workers=self.num_workers > 0), device)

    def train_loader(self, batch_size: int, device, seed: int) -> _ToDevice:
        """Seeded shuffling; with num_workers > 0 the workers' augmentation seeds also derive from `seed`."""
        return self._loader(_Indexed(self.train), batch_size, device, torch.Generator().manual_seed(seed))

    def eval_loader(self, batch_size: int, device) -> _ToDevice:
        return self._loader(self.val, batch_size, device, None)


@DATASETS.register()
def imagefolder(root=None, img_size: int = 224, num_workers: int = 4) -> ImageFolderDataset:
    """ImageNet-style <root>/train/<class>/* and <root>/val/<class>/*, decoded by DataLoader workers."""
    if root is None:
        raise MixkdError("imagefolder: needs a data root: pass --data-root with the folder that holds train/ and val/")
    return ImageFolderDataset(Path(root), img_size, num_workers)
