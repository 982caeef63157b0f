"""scikit-learn's bundled 8×8 digits: a real dataset that needs no download, for the quickstart and tests."""

from __future__ import annotations

import math

import numpy as np
import torch

from . import DATASETS, InMemoryDataset, input_shape
from .split import hold_out_val

DIGITS = 1797  # images in scikit-learn's copy; the test split takes ceil(test_fraction × that), as sklearn does


@DATASETS.register()
@input_shape(10, 1, 8, train_images=lambda spec: DIGITS - math.ceil(spec["test_fraction"] * DIGITS),
             eval_images=lambda spec: math.ceil(spec["test_fraction"] * DIGITS))
def digits(root=None, test_fraction: float = 0.2, split_seed: int = 0, in_chans: int = 1,
           val_size: int = 0) -> InMemoryDataset:
    """1,797 images, 10 classes; a fixed stratified split (`split_seed`) so every run sees the same test set.

    `val_size` > 0 evaluates on that many images held out of the training split instead of the test set.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[:, None]  # 0..16 → 0..255, (N, 1, 8, 8)
    images = np.repeat(images, in_chans, axis=1)
    x_tr, x_te, y_tr, y_te = train_test_split(images, data.target, test_size=test_fraction,
                                              random_state=split_seed, stratify=data.target)
    mean = float(x_tr.mean() / 255)
    std = float(x_tr.std() / 255)
    ds = InMemoryDataset("digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
                         torch.from_numpy(x_te), torch.from_numpy(y_te).long(), num_classes=10,
                         mean=(mean,) * in_chans, std=(std,) * in_chans, crop_padding=1, flip=False)
    return hold_out_val(ds, val_size, split_seed) if val_size else ds
