"""ImageNet-style folders (`<root>/train/<class>/*`, `<root>/val/<class>/*`) through torchvision.

Too big for the device-resident loader, so images are decoded batch by batch with the standard ImageNet
recipe: RandomResizedCrop + flip for training, resize to img_size/0.875 + centre crop for evaluation, both
normalised with the ImageNet statistics. `decode` chooses who decodes:

- `pil` (default): DataLoader workers, with PIL, running torchvision's transforms one image at a time.
- `device`: workers only read each file's bytes and draw its crop and flip; the main process decodes the
  whole batch in one `decode_jpeg` call on the training device (nvjpeg on CUDA), then crops, resizes, flips
  and normalises it as batched tensor ops. At ImageNet scale JPEG decoding is the CPU work that starves a
  GPU, so this takes it off the cores. Files nvjpeg does not take (PNG, CMYK JPEGs) are decoded on the CPU.

Both draw the same crops from the same random numbers and resample with PIL's filter, so their images
differ only by decoder and rounding, in the last bits of a pixel (see `_resample_weights`). The filter is
bilinear unless `interpolation` says bicubic (DeiT's main.py), or `random`: either, drawn per training crop
(timm's train.py, so TransMix's); `eval_interpolation` is the evaluation resize's. RandAugment's geometric
ops take the training crops' filter, or draw their own where it is random, as timm's create_transform has
them. Bicubic, the two paths differ at strong edges (`_resample`), and `decode` joins the run id.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch import Tensor

from ..errors import MixkdError
from . import DATASETS
from .erasing import random_erasing as erase
from .loader import _one_thread, epoch_images, epoch_order
from .randaugment import RandAugment, cubic_kernel

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # RandomResizedCrop's ranges of area fraction and aspect ratio
EVAL_CROP = 0.875  # evaluation resizes the shorter side to round(img_size / EVAL_CROP), centre-crops img_size
FILTERS = ("bilinear", "bicubic")  # PIL's, by the index a `random` crop draws


class _Shard:
    """A rank's part (a contiguous slice) of each batch of a seeded permutation, for a run across devices or with
    repeated augmentation (`epoch_order`): every rank draws the permutation RandomSampler would from the same
    generator, so together the ranks go through the batches one process would."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int, world: int,
                 repeats: int | None = None):
        self.n, self.batch_size, self.generator, self.rank, self.world = n, batch_size, generator, rank, world
        self.repeats = repeats

    def __len__(self) -> int:
        return -(-epoch_images(self.n, self.repeats, self.world) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(torch.randperm(self.n, generator=self.generator), self.batch_size, self.repeats,
                            self.world)
        for batch in order.split(self.batch_size):
            yield batch.tensor_split(self.world)[self.rank].tolist()


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


# ---- decode: device ---------------------------------------------------------------------------------------


def eval_resize(size: int, crop: float | None) -> int:
    """The shorter side evaluation images are resized to before a centre crop of `size`: timm's
    floor(size / crop) for a crop fraction given (timm's DeiT configs, so TransMix's: 0.9), else
    round(size / 0.875) (256 for 224, as torchvision's ImageNet reference and DeiT's own main.py)."""
    return round(size / EVAL_CROP) if crop is None else math.floor(size / crop)


def _eval_window(length: int, other: int, size: int, short: int) -> tuple[int, int, int, int]:
    """One axis of Resize(short) + CenterCrop(size) as a window (see `_resample_weights`), for an image
    `length` pixels along it and `other` across: torchvision's arithmetic, its rounding included, so that the
    pixels kept are the PIL pipeline's."""
    resized = short if length <= other else short * length // other
    return 0, length, resized, int(round((resized - size) / 2.0))


def _filter(interpolation: str) -> str:
    """The filter of one crop: `interpolation`'s, or for `random` one of FILTERS drawn from torch's generator
    (timm's RandomResizedCropAndInterpolation draws from Python's, which a run without workers leaves
    unseeded)."""
    return FILTERS[int(torch.randint(len(FILTERS), ()))] if interpolation == "random" else interpolation


class _ResizedCrop:
    """torchvision's RandomResizedCrop, its filter drawn per crop by `_filter` after the crop's box."""

    def __init__(self, size: int, interpolation: str):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image):
        from torchvision import transforms as T
        from torchvision.transforms import functional as TF

        top, left, h, w = T.RandomResizedCrop.get_params(image, SCALE, RATIO)
        mode = T.InterpolationMode(_filter(self.interpolation))
        return TF.resized_crop(image, top, left, h, w, [self.size, self.size], mode, antialias=True)


class _Encoded(torch.utils.data.Dataset):
    """Per file: (bytes, whether nvjpeg decodes it, row window, column window, flip, bicubic, label[, index]).

    What decoding on the device needs, read without decoding a pixel: the header alone gives the size the
    crop is drawn for. Training crops are torchvision's own RandomResizedCrop.get_params, filter and flip
    draws, in the PIL pipeline's order, from the same generator (each DataLoader worker's, seeded from the
    loader's). `interpolation`: the training crops' (`_filter`), or for evaluation the resize's.
    """

    def __init__(self, samples: list[tuple[str, int]], size: int, augment: bool,
                 interpolation: str = "bilinear", resize: int | None = None):
        self.samples, self.size, self.augment, self.interpolation = samples, size, augment, interpolation
        self.resize = resize or eval_resize(size, None)  # evaluation's shorter side before its centre crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, k: int):
        from PIL import Image
        from torchvision import transforms as T
        from torchvision.io import read_file

        path, label = self.samples[k]
        data = read_file(path)
        header = Image.open(io.BytesIO(data.numpy()))  # parses the header only
        height, width = header.height, header.width
        if self.augment:
            top, left, h, w = T.RandomResizedCrop.get_params(header, SCALE, RATIO)
            rows, cols = (top, h, self.size, 0), (left, w, self.size, 0)
            bicubic = _filter(self.interpolation) == "bicubic"
            flip = bool(torch.rand(1) < 0.5)
        else:
            rows = _eval_window(height, width, self.size, self.resize)
            cols = _eval_window(width, height, self.size, self.resize)
            bicubic, flip = self.interpolation == "bicubic", False
        nvjpeg = header.format == "JPEG" and header.mode != "CMYK"
        item = (data, nvjpeg, torch.tensor(rows), torch.tensor(cols), flip, bicubic, label)
        return (*item, k) if self.augment else item


def _collate(items: list[tuple]) -> tuple:
    """The batch's files end to end in one tensor, with their lengths, so that a batch leaves a worker as one
    shared-memory block (a tensor per file runs out of file descriptors); the other fields stack as usual."""
    data, *fields = zip(*items)
    return (torch.cat(data), torch.tensor([len(d) for d in data]),
            *(torch.utils.data.default_collate(list(f)) for f in fields))


def _decode(data: list[Tensor], nvjpeg: list[bool], device: torch.device) -> list[Tensor]:
    """Each file as a (3, H, W) uint8 image on `device`: the JPEGs in one batched decode_jpeg (nvjpeg on
    CUDA), the rest one by one on the CPU. Grayscale and CMYK come out RGB, as PIL's convert("RGB") does."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    rgb = ImageReadMode.RGB
    jpegs = [k for k, flag in enumerate(nvjpeg) if flag]
    batch = decode_jpeg([data[k] for k in jpegs], mode=rgb, device=device) if jpegs else []
    decoded = dict(zip(jpegs, batch))
    return [decoded[k] if k in decoded else decode_image(d, mode=rgb).to(device, non_blocking=True)
            for k, d in enumerate(data)]


def _resample_weights(windows: Tensor, size: int, extent: int, bicubic: Tensor) -> Tensor:
    """(B, size, extent) matrices that crop and resize one axis of B images `extent` pixels long, as PIL.

    Window (start, length, resized, offset): pixels start..start+length-1 resized to `resized` pixels, of
    which offset..offset+size-1 are kept. Each output pixel weighs the window's pixels by their distance d
    from its centre, in units of max(1, scale), under a triangle filter (1 - |d|, bilinear) or where
    `bicubic` PIL's cubic (a = -0.5, zero from |d| = 2), renormalised to sum to 1: the coefficients of PIL's
    antialiased resize (which torchvision's tensor resize copies), so the crops are the PIL pipeline's but for
    PIL's fixed-point arithmetic. Dense, so that resampling a batch is two batched matmuls, which a GPU does
    in a fraction of the decode's time.
    """
    start, length, resized, offset = (w[:, None, None] for w in windows.float().unbind(1))
    scale = length / resized
    centre = start + (offset + torch.arange(size, device=windows.device)[:, None] + 0.5) * scale
    pixel = torch.arange(extent, device=windows.device) + 0.5
    d = (pixel - centre).abs() / scale.clamp(min=1)
    weights = torch.where(bicubic.view(-1, 1, 1), cubic_kernel(d, -0.5), (1 - d).clamp(min=0))
    weights *= (pixel > start) & (pixel < start + length)  # PIL crops before it resizes
    return weights / weights.sum(-1, keepdim=True)


def _resample(images: list[Tensor], rows: Tensor, cols: Tensor, flip: Tensor, bicubic: Tensor, size: int
              ) -> Tensor:
    """(B, 3, size, size) whole pixel levels 0-255 (as floats): each image through its column, then its row
    window with its filter (see `_resample_weights`), mirrored where `flip`, rounded and clipped to levels
    after each pass as PIL does (`_level`; clipped only at the end, a cubic's overshoot left noise 20 levels
    off). PIL picks which pass goes first itself (Pillow 13 by the image's shape, up to its version): bilinear,
    that moves no pixel by more than a level; bicubic, whose first pass's overshoot is clipped, edge pixels
    of the other order by up to ~20 levels on noise, so `decode` is part of bicubic runs' ids
    (`data.runtime_params`). Images of one shape stack, so a batch costs two einsums per distinct shape (a few
    dozen in an ImageNet batch), not a resize per image. `rows`, `cols`, `flip` and `bicubic` are the loader's
    CPU tensors: copied to the device without blocking, they never wait on a CUDA stream."""
    device = images[0].device
    out = torch.empty(len(images), 3, size, size, device=device)
    shapes: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        shapes.setdefault(tuple(image.shape[1:]), []).append(k)
    for (height, width), members in shapes.items():
        at = torch.tensor(members)
        idx, row, col, mirror, cubic = (t.to(device, non_blocking=True)
                                        for t in (at, rows[at], cols[at], flip[at], bicubic[at]))
        wy, wx = _resample_weights(row, size, height, cubic), _resample_weights(col, size, width, cubic)
        wx = torch.where(mirror[:, None, None], wx.flip(1), wx)
        # height, width, channel: how the CPU decoders lay pixels out, so that stacking is a plain copy
        pixels = torch.stack([images[k].permute(1, 2, 0) for k in members]).float()
        across = _level(torch.einsum("bhwc,bxw->bhxc", pixels, wx))
        out[idx] = _level(torch.einsum("byh,bhxc->bcyx", wy, across))
    return out


def _level(x: Tensor) -> Tensor:
    """Whole pixel levels as PIL's resampling leaves them: halves rounded up, then clipped to 0-255."""
    return x.add_(0.5).floor_().clamp_(0, 255)


class _DecodedOnDevice:
    """A DataLoader of `_Encoded` files whose batches are decoded, resampled and normalised on `device`:
    (x, y) for evaluation, (x, y, index) for training, through a RandAugment policy and random erasing on the
    device if asked, drawn from a generator seeded each epoch by the loader's state (so a resumed run draws
    them again)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device, size: int,
                 randaugment: RandAugment | None = None, random_erasing: float | None = None):
        self.loader, self.device, self.size = loader, device, size
        self.randaugment, self.random_erasing = randaugment, random_erasing
        self.fill = (torch.tensor(IMAGENET_MEAN, device=device) * 255).round()
        self.generator = loader.generator  # shuffling and worker seeds: checkpointed to resume a run
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.scale = 1 / (255 * std)
        self.shift = -torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) / std

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        threads = _one_thread if self.device.type == "cpu" else nullcontext  # see `_one_thread`
        g = None
        if self.randaugment is not None or self.random_erasing:  # seeded by the loader's state, not a draw
            g = torch.Generator(self.device)  # from it: the batches' order stays that of a plain run
            state = hashlib.blake2b(self.generator.get_state().numpy().tobytes(), digest_size=8).digest()
            g.manual_seed(int.from_bytes(state, "little") >> 1)
        for data, lengths, nvjpeg, rows, cols, flip, bicubic, *targets in self.loader:
            with threads():
                images = _decode(data.split(lengths.tolist()), nvjpeg.tolist(), self.device)
                x = _resample(images, rows, cols, flip, bicubic, self.size)
                if self.randaugment is not None:
                    x = self.randaugment(x.to(torch.uint8), self.fill, g).float()
                x = x.mul_(self.scale).add_(self.shift)
                if self.random_erasing:
                    x = erase(x, self.random_erasing, g)
            yield x, *(t.to(self.device, non_blocking=True) for t in targets)


# ---- the dataset ------------------------------------------------------------------------------------------


class ImageFolderDataset:
    """Implements the `Dataset` protocol; class indices follow the sorted folder names of train/."""

    name, in_chans = "imagefolder", 3

    def __init__(self, root: Path, img_size: int = 224, num_workers: int = 4, decode: str = "pil",
                 interpolation: str = "bilinear", eval_interpolation: str = "bilinear",
                 eval_crop: float | None = None):
        from torchvision import datasets, transforms as T

        splits = {split: root / split for split in ("train", "val")}
        for path in splits.values():
            if not path.is_dir():
                raise MixkdError(f"imagefolder: {path} is not a folder; the data root must hold train/<class>/* "
                                 f"and val/<class>/* (pass --data-root)")
        normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.train = datasets.ImageFolder(str(splits["train"]))  # its transform: the recipe's (train_loader)
        self.val = datasets.ImageFolder(str(splits["val"]), T.Compose([
            T.Resize(eval_resize(img_size, eval_crop), T.InterpolationMode(eval_interpolation)),
            T.CenterCrop(img_size), T.ToTensor(), normalize]))
        if self.val.classes != self.train.classes:
            missing = sorted(set(self.train.classes) ^ set(self.val.classes))
            raise MixkdError(f"imagefolder: train/ and val/ under {root} hold different classes "
                             f"(only in one: {', '.join(missing[:5])})")
        self.img_size, self.num_workers, self.decode = img_size, num_workers, decode
        self.interpolation, self.eval_interpolation = interpolation, eval_interpolation
        self.eval_resize = eval_resize(img_size, eval_crop)
        self.num_classes, self.num_train_images = len(self.train.classes), len(self.train)
        self.train_targets = torch.as_tensor(self.train.targets)

    def _loader(self, ds, batch_size: int, device, generator: torch.Generator | None, shard=(0, 1),
                augment: str | None = None, random_erasing: float | None = None, repeats: int | None = None):
        device, on_device = torch.device(device), self.decode == "device"
        batches = ({"batch_sampler": _Shard(len(ds), batch_size, generator, *shard, repeats)}
                   if shard[1] > 1 or repeats else {"batch_size": batch_size, "shuffle": generator is not None})
        loader = torch.utils.data.DataLoader(
            ds, **batches, generator=generator, num_workers=self.num_workers,
            collate_fn=_collate if on_device else None, pin_memory=device.type == "cuda" and not on_device,
            persistent_workers=self.num_workers > 0)
        if on_device:
            policy = RandAugment.parse(augment, interpolation=self.interpolation) if augment else None
            return _DecodedOnDevice(loader, device, self.img_size, policy, random_erasing)
        return _ToDevice(loader, device)

    def train_loader(self, batch_size: int, device, seed: int, augment: str | None = None,
                     random_erasing: float | None = None, shard: tuple[int, int] = (0, 1),
                     repeated_augment: int | None = None) -> _ToDevice | _DecodedOnDevice:
        """Seeded shuffling; with num_workers > 0 the workers' augmentation seeds also derive from `seed`.
        `augment`, `random_erasing`: timm's RandAugment and RandomErasing, in the workers (PIL, timm's own
        transforms, as DeiT) or on the device with `decode: device`. `shard` (rank, world): that rank's part
        of each batch, for a run across devices; `repeated_augment`: DeiT's, each image that many times in a row
        (`epoch_order`)."""
        generator = torch.Generator().manual_seed(seed)
        if self.decode == "device":
            encoded = _Encoded(self.train.samples, self.img_size, True, self.interpolation)
            return self._loader(encoded, batch_size, device, generator, shard, augment, random_erasing,
                                repeated_augment)
        train = copy.copy(self.train)
        train.transform = self._train_transform(augment, random_erasing)
        return self._loader(_Indexed(train), batch_size, device, generator, shard, repeats=repeated_augment)

    def _train_transform(self, augment: str | None, random_erasing: float | None):
        """DeiT's order, as timm's create_transform builds it: crop and flip, RandAugment on the PIL image
        (translations relative to the size, gaps filled with the mean pixel, the crops' filter unless random),
        tensor, normalise, erase."""
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing
        from timm.data.transforms import str_to_pil_interp
        from torchvision import transforms as T

        hparams = {"translate_const": int(self.img_size * 0.45),
                   "img_mean": tuple(round(255 * m) for m in IMAGENET_MEAN)}
        if self.interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(self.interpolation)
        policy = [rand_augment_transform(augment, hparams)] if augment else []
        erasing = [RandomErasing(random_erasing, mode="pixel", device="cpu")] if random_erasing else []
        return T.Compose([_ResizedCrop(self.img_size, self.interpolation), T.RandomHorizontalFlip(), *policy,
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD), *erasing])

    def eval_loader(self, batch_size: int, device) -> _ToDevice | _DecodedOnDevice:
        ds = (_Encoded(self.val.samples, self.img_size, False, self.eval_interpolation, self.eval_resize)
              if self.decode == "device" else self.val)
        return self._loader(ds, batch_size, device, None)


@DATASETS.register()
def imagefolder(root=None, img_size: int = 224, num_workers: int = 4,
                decode: Literal["pil", "device"] = "pil",
                interpolation: Literal["bilinear", "bicubic", "random"] | None = None,
                eval_interpolation: Literal["bilinear", "bicubic"] | None = None,
                eval_crop: float | None = None) -> ImageFolderDataset:
    """ImageNet-style <root>/train/<class>/* and <root>/val/<class>/*, decoded by DataLoader workers with
    PIL, or with `decode: device` batch by batch on the training device (nvjpeg on CUDA). Training crops are
    resized with `interpolation` (unset: bilinear; random: bilinear or bicubic per crop, as timm), evaluation
    with `eval_interpolation` (unset: bilinear) to floor(img_size / eval_crop) before its centre crop (unset:
    256 for 224); unset, they stay out of run ids older than them."""
    if root is None:
        raise MixkdError("imagefolder: needs a data root: pass --data-root with the folder that holds train/ and val/")
    if decode not in ("pil", "device"):
        raise MixkdError(f"imagefolder: decode must be pil or device, got {decode!r}")
    if eval_crop is not None and not 0 < eval_crop <= 1:
        raise MixkdError(f"imagefolder: eval_crop must be in (0, 1] (the centre crop's share of the resized "
                         f"side), got {eval_crop!r}")
    return ImageFolderDataset(Path(root), img_size, num_workers, decode, interpolation or "bilinear",
                              eval_interpolation or "bilinear", eval_crop)
