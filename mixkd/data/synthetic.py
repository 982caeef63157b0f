"""Random class-conditional images for tests: any shape, instant, and learnable (each class has its own mean)."""

from __future__ import annotations

import torch

from . import DATASETS, InMemoryDataset, input_shape


@DATASETS.register()
@input_shape(4, 3, 8, train_images=lambda spec: spec["train_size"],
             eval_images=lambda spec: spec["test_size"])
def synthetic(root=None, num_classes: int = 4, train_size: int = 256, test_size: int = 64, img_size: int = 8,
              in_chans: int = 3, seed: int = 0) -> InMemoryDataset:
    """Tests only: noisy copies of one random image per class, any size, instant."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_classes, in_chans, img_size, img_size, generator=g) * 255

    def draw(n: int):
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, in_chans, img_size, img_size, generator=g) * 40
        return (centers[y] + noise).clamp(0, 255).to(torch.uint8), y

    train_x, train_y = draw(train_size)
    test_x, test_y = draw(test_size)
    return InMemoryDataset("synthetic", train_x, train_y, test_x, test_y, num_classes=num_classes,
                           mean=(0.5,) * in_chans, std=(0.25,) * in_chans)
