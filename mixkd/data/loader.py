"""Device-resident loader: the whole uint8 dataset lives on the device; augmentation is batched tensor ops.

Why: at CIFAR scale the per-sample PIL transforms and worker processes of a torchvision DataLoader,
not the GPU, set the speed of small-model distillation (the airbench observation). Here an epoch is
one seeded permutation plus, per batch, a handful of kernels: three random draws, one index_select
that gathers, crops and flips in a single copy, and a normalisation. Nothing in the loop reads a
device value on the host, so on CUDA the loader never synchronises.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import Tensor

from .erasing import random_erasing
from .randaugment import RandAugment


def crop_windows(images: Tensor, padding: int, flip: bool) -> Tensor:
    """Every augmented view of every image as rows of one overlapping strided view, for one index_select.

    The images are zero-padded (like torchvision's RandomCrop(size, padding)) and, with `flip`, followed by
    their mirror images; row k of the result is the (C, H, W) window that starts at flat element k. So the
    crop at (dy, dx) of image i is row `i * image_stride + dy * row_stride + dx` (add N to i for the mirror).
    One index_select then copies whole contiguous rows of pixels; advanced indexing with per-pixel
    indices, plus a torch.where for the flip, was ~20× slower on the CPU. The price is memory:
    (1 + flip) × the padded dataset, 480 MB for CIFAR's 50,000 training images.
    """
    n, c, h, w = images.shape
    p, hp, wp = padding, h + 2 * padding, w + 2 * padding
    padded = images.new_zeros((1 + flip) * n, c, hp, wp)
    padded[:n, :, p:p + h, p:p + w] = images
    if flip:
        padded[n:, :, p:p + h, p:p + w] = images.flip(3)
    flat = padded.view(-1)
    span = (c - 1) * hp * wp + (h - 1) * wp + w  # flat elements one window covers
    return flat.as_strided((flat.numel() - span + 1, c, h, w), (1, hp * wp, wp, 1))


def epoch_images(n: int, repeats: int | None = None, world: int = 1) -> int:
    """How many of n images an epoch goes through: n, or with repeated augmentation each of `world` ranks'
    streams cut to n // world (`epoch_order`)."""
    return n // world * world if repeats else n


def epoch_order(perm: Tensor, batch_size: int, repeats: int | None = None, world: int = 1) -> Tensor:
    """The order an epoch goes through the images in, from its permutation `perm`: `perm` itself, or with
    `repeats`, DeiT's repeated augmentation (`RASampler`): each image `repeats` times in a row, dealt round the
    `world` ranks in turn (so its copies land on different devices where there are several), each rank's
    stream cut to n // world images, so an epoch still sees n images (DeiT rounds it down to a multiple of 256
    too). Laid out as global batches whose `world` contiguous slices are each rank's next batch_size / world
    images of its stream, as `DeviceLoader`'s shards are."""
    if not repeats:
        return perm
    n, per_rank = len(perm), batch_size // world
    dealt = perm.repeat_interleave(repeats)
    pad = -len(dealt) % world
    dealt = torch.cat([dealt, dealt[:pad]])  # whole rounds of the ranks, padded as RASampler pads
    length = epoch_images(n, repeats, world) // world
    streams = dealt.view(-1, world).t()[:, :length]  # rank r: dealt[r], dealt[r + world], ...
    return torch.cat([streams[:, i:i + per_rank].reshape(-1) for i in range(0, length, per_rank)])


@contextmanager
def _one_thread():
    """Run a batch's CPU ops on the calling thread alone.

    Each batch is ~200k elements, just above the size at which torch splits an op across its OpenMP
    threads. That split gains little, and when the cores are busy (a training step in another process,
    DataLoader workers) each op waits for a descheduled thread: measured on 2 shared cores, 30-500
    batches/s with 2 threads against 2,000-5,000 with one. Toggling costs under a microsecond.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DeviceLoader:
    """Yields normalised float batches (x, y) on `device` — with `indexed`, (x, y, index): each sample's position
    in the dataset, which methods with a memory of every image (CRD) key by; the same seed gives the same
    batches.

    Augmentation draws, per sample and independently, a crop offset uniform over the (2p+1)² positions
    and a horizontal flip with probability 1/2, the distribution of torchvision's RandomCrop(padding=p)
    + RandomHorizontalFlip. It mirrors before cropping, which is the same distribution because the
    offsets are uniform and symmetric. `randaugment` then puts each cropped image through a RandAugment
    policy (`mixkd.data.randaugment`), its gaps filled with `mean`, on the device, drawing from the same
    generator; `random_erasing` erases a box of each normalised image with that probability.

    `shard` (rank, world): one rank's part of each batch when a run trains across devices (`mixkd.ranks`). Every
    rank draws the same permutation and the augmentation of the whole global batch from the same seed, then keeps
    its contiguous slice, so the ranks together see exactly the batches one process would. `repeats`: DeiT's
    repeated augmentation (`epoch_order`), each copy of an image augmented on its own. The price: each rank
    augments the global batch, world × the loader's work, which at CIFAR scale is small beside a step.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean, std, *, device="cpu",
                 shuffle: bool = False, crop_padding: int = 0, flip: bool = False, seed: int = 0,
                 drop_last: bool = False, indexed: bool = False, randaugment: RandAugment | None = None,
                 random_erasing: float | None = None, shard: tuple[int, int] = (0, 1), repeats: int | None = None):
        device = torch.device(device)
        self.rank, self.world = shard
        images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.indexed = batch_size, shuffle, drop_last, indexed
        self.repeats = repeats
        self.crop_padding, self.flip = crop_padding, flip
        self.augment = bool(crop_padding or flip)
        self.image_shape = images.shape
        # what each batch is gathered from: the windows of every augmented view, or the images themselves
        self.source = crop_windows(images, crop_padding, flip) if self.augment else images
        # (x / 255 - mean) / std as a multiply and an add on the uint8 values
        std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std
        self.randaugment, self.random_erasing = randaugment, random_erasing
        self.fill = (torch.tensor(mean, device=device) * 255).round()
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        n = epoch_images(len(self.labels), self.repeats, self.world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, device = len(self.labels), self.labels.device
        order = (torch.randperm(n, device=device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=device))
        order = epoch_order(order, self.batch_size, self.repeats, self.world)
        threads = _one_thread if device.type == "cpu" else nullcontext
        for idx in order.split(self.batch_size)[:len(self)]:
            with threads():
                x, y = self._batch(idx)
            x, y, idx = (t.tensor_split(self.world)[self.rank] for t in (x, y, idx))  # this rank's shard
            yield (x, y, idx) if self.indexed else (x, y)

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x = self.source.index_select(0, self._window_starts(idx) if self.augment else idx)
        if self.randaugment is not None:
            x = self.randaugment(x, self.fill, self.generator)
        x = x.float().mul_(self.scale).add_(self.shift)
        if self.random_erasing:
            x = random_erasing(x, self.random_erasing, self.generator)
        return x, self.labels.index_select(0, idx)

    def _window_starts(self, idx: Tensor) -> Tensor:
        """Flat start of each sample's randomly chosen window in `self.source` (see `crop_windows`)."""
        n, c, h, w = self.image_shape
        p, g, b = self.crop_padding, self.generator, len(idx)
        wp = w + 2 * p
        image = idx
        if self.flip:
            image = idx + n * (torch.rand(b, device=idx.device, generator=g) < 0.5)
        start = image * (c * (h + 2 * p) * wp)
        if p:
            dy = torch.randint(0, 2 * p + 1, (b,), device=idx.device, generator=g)
            dx = torch.randint(0, 2 * p + 1, (b,), device=idx.device, generator=g)
            start += dy * wp + dx
        return start
