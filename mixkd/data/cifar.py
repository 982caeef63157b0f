"""CIFAR-10 and CIFAR-100 from the official python pickles, as uint8 NCHW tensors.

The pickles are read directly: they store each image as 3,072 bytes in CHW order, so one reshape
gives the layout the device-resident loader wants, in well under a second, where torchvision's
Dataset transposes to HWC for PIL. The files' md5 is checked before unpickling them (a pickle can
run code), once per process for each unchanged file. `download: true` uses torchvision's downloader,
which is only imported then: importing torchvision takes longer than reading the data.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import MixkdError
from . import DATASETS, InMemoryDataset, input_shape
from .split import hold_out_val, train_subset

# RepDistiller's constants (dataset/cifar100.py), so accuracies compare with the published tables.
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
# The per-channel statistics of CIFAR-10's training set.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# folder under the root, then (file, md5) of the training and the test files, as torchvision lists them
CIFAR100_FILES = ("cifar-100-python", [("train", "16019d7e3df5f24257cddd939b257f8d")],
                  [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")])
CIFAR10_FILES = ("cifar-10-batches-py", [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                                         ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                                         ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                                         ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                                         ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
                 [("test_batch", "40351d587109b95175f43aff81a1287e")])

_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files whose md5 matched


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _checked(path: Path, md5: str, name: str, base_folder: str) -> Path:
    hint = f"pass --data-root with the folder that holds {base_folder}/, or set download: true"
    try:
        st = path.stat()
    except OSError:
        raise MixkdError(f"{name}: {path} is missing (expected md5 {md5}); {hint}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        actual = _md5(path)
        if actual != md5:
            raise MixkdError(f"{name}: {path} is corrupt or incomplete (md5 {actual}, expected {md5}); {hint}")
        _verified.add(key)
    return path


def _read(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")  # numpy takes the image bytes as they are; latin1 is ~3x slower
        xs.append(entry[b"data"].reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry.get(b"fine_labels", entry.get(b"labels"))))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()


def _load(name: str, files, num_classes: int, mean, std, root: Path | None, download: bool, val_size: int,
          split_seed: int, train_size: int | None) -> InMemoryDataset:
    folder, train_files, test_files = files
    if root is None:
        raise MixkdError(f"{name}: needs a data root: pass --data-root with the folder that holds {folder}/ "
                         f"(or where download: true should put it)")
    root = Path(root)

    def checked(files) -> list[Path]:
        return [_checked(root / folder / file, md5, name, folder) for file, md5 in files]

    try:
        train, test = checked(train_files), checked(test_files)
    except MixkdError:
        if not download:
            raise
        import torchvision.datasets
        from torchvision.datasets.utils import download_and_extract_archive

        tv = getattr(torchvision.datasets, name.upper())
        download_and_extract_archive(tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5)
        train, test = checked(train_files), checked(test_files)
    ds = InMemoryDataset(name, *_read(train), *_read(test), num_classes=num_classes, mean=mean, std=std,
                         crop_padding=4, flip=True)
    ds = hold_out_val(ds, val_size, split_seed) if val_size else ds  # first: one val split whatever train_size
    return train_subset(ds, train_size, split_seed) if train_size is not None else ds


@DATASETS.register()
@input_shape(100, 3, 32, train_images=50_000, eval_images=10_000)
def cifar100(root=None, download: bool = False, val_size: int = 0, split_seed: int = 0,
             train_size: int | None = None) -> InMemoryDataset:
    """50,000 train / 10,000 test images of 100 classes; `val_size` evaluates on images held out of train,
    `train_size` trains on that many of the rest (stratified, by `split_seed`): a quick run on real data."""
    return _load("cifar100", CIFAR100_FILES, 100, CIFAR100_MEAN, CIFAR100_STD, root, download, val_size, split_seed,
                 train_size)


@DATASETS.register()
@input_shape(10, 3, 32, train_images=50_000, eval_images=10_000)
def cifar10(root=None, download: bool = False, val_size: int = 0, split_seed: int = 0,
            train_size: int | None = None) -> InMemoryDataset:
    """50,000 train / 10,000 test images of 10 classes; `val_size` evaluates on images held out of train,
    `train_size` trains on that many of the rest (stratified, by `split_seed`): a quick run on real data."""
    return _load("cifar10", CIFAR10_FILES, 10, CIFAR10_MEAN, CIFAR10_STD, root, download, val_size, split_seed,
                 train_size)
