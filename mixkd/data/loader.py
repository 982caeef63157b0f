"""Device-resident loader: the whole uint8 dataset lives on the device; augmentation is batched tensor ops.

Why: at CIFAR scale the per-sample PIL transforms and worker processes of a torchvision DataLoader,
not the GPU, set the speed of small-model distillation (the airbench observation). Here an epoch is
one seeded permutation plus, per batch, a gather, a random crop, a flip and a normalisation.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Per-sample random crop of zero-padded images, like torchvision's RandomCrop(size, padding)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Horizontal flip of each sample with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class DeviceLoader:
    """Yields normalised float batches (x, y) on `device`; the same seed gives the same batches."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean, std, *, device="cpu",
                 shuffle: bool = False, crop_padding: int = 0, flip: bool = False, seed: int = 0,
                 drop_last: bool = False):
        device = torch.device(device)
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip = crop_padding, flip
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        order = (torch.randperm(n, device=self.images.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.images.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, self.generator)
            if self.flip:
                x = random_flip(x, self.generator)
            yield (x.float() - self.mean) / self.std, self.labels[idx]
