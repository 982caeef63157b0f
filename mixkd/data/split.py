"""Validation splits held out of the training set, and training subsets, for every in-memory dataset alike.

Why: tuning against the test set overfits it. A study that selects hyper-parameters sets `val_size`,
trains on the rest of train and evaluates on the held-out images; the test set is never read. A study that
wants a quick run on real data sets `train_size` and trains on a stratified part of train.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..errors import MixkdError
from . import InMemoryDataset


def stratified_holdout(labels: Tensor, size: int, seed: int = 0, what: str = "val_size") -> tuple[Tensor, Tensor]:
    """Sorted indices (keep, held_out) with `size` held out, each class in proportion to its frequency.

    Each sample's key is its (seeded random) rank within its class divided by the class size; the
    `size` smallest keys are held out, so every class gives its share, rounded either way by the seed.
    Unlike sklearn's stratified split this accepts any size, even fewer than the number of classes.
    """
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < n:
        raise MixkdError(f"{what}: {size!r} must be a whole number of images from 1 to {n - 1} "
                         f"(the training split has {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    y = labels[perm].long()
    counts = torch.bincount(y)
    by_class = torch.sort(y, stable=True).indices  # grouped by class, random order within each
    rank = torch.empty(n, dtype=torch.float64)
    rank[by_class] = (torch.arange(n) - (counts.cumsum(0) - counts)[y[by_class]]).double()
    key = (rank + 0.5) / counts[y]
    held = torch.sort(key, stable=True).indices[:size]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[held]] = True
    return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)


def hold_out_val(ds: InMemoryDataset, val_size: int, seed: int = 0) -> InMemoryDataset:
    """`ds` evaluated on `val_size` stratified training images instead of its test split."""
    keep, val = stratified_holdout(ds.train_y, val_size, seed)
    return dataclasses.replace(ds, train_x=ds.train_x[keep], train_y=ds.train_y[keep],
                               eval_x=ds.train_x[val], eval_y=ds.train_y[val], eval_split="val")


def train_subset(ds: InMemoryDataset, size: int, seed: int = 0) -> InMemoryDataset:
    """`ds` training on `size` of its training images, each class in proportion: a quick run on real data.
    With one seed a smaller subset is part of a larger one (both take the lowest keys of one draw)."""
    if size == len(ds.train_y):
        return ds
    _, kept = stratified_holdout(ds.train_y, size, seed, what="train_size")
    return dataclasses.replace(ds, train_x=ds.train_x[kept], train_y=ds.train_y[kept])
