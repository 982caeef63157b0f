"""Reference loop for `mixkd bench`: vanilla KD trained the way RepDistiller trains it.

Why: a speedup needs a baseline people actually run. RepDistiller (HobbitLong/RepDistiller) is the
codebase most CIFAR-100 KD tables come from, so this is its `train_student.py --distill kd -r 0.1
-a 0.9 -b 0` step, rebuilt on mixkd's models: torchvision CIFAR100 with per-image PIL transforms
(`dataset/cifar100.py`), a DataLoader with 8 workers by default and no pinned memory, fp32, SGD
lr 0.05 / momentum 0.9 / wd 5e-4 over the student only, and per step what `helper/loops.py`
`train_distill` does: blocking `.cuda()` copies of input, target and sample index, the teacher under
no_grad in eval mode, `loss.item()`, top-1/top-5 meters and `time.time()` around every batch.

Left out, as they are not training steps: the per-epoch validation, checkpoints and LR schedule.
RepDistiller's models also return their features (`is_feat=True`); those are activations the forward
computes anyway, so logits alone cost the same.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..data.cifar import CIFAR100_MEAN, CIFAR100_STD
from ..engine import synchronize

# `-r 0.1 -a 0.9 -b 0 --kd_T 4`: the KD line of RepDistiller's scripts/run_cifar_distill.sh
GAMMA, ALPHA, BETA, KD_T = 0.1, 0.9, 0.0, 4.0
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
PRINT_FREQ = 100  # train_student.py's --print_freq default


class _Meter:
    """RepDistiller's AverageMeter: keeps whatever it is given, so tensors stay on the device."""

    def __init__(self):
        self.val, self.sum, self.count = 0, 0, 0

    def update(self, val, n: int = 1):
        self.val = val
        self.sum += val * n
        self.count += n

    @property
    def avg(self):
        return self.sum / self.count


def _topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Percent of rows whose target is in the top k, as 1-element tensors (no host sync)."""
    with torch.no_grad():
        top = logits.topk(max(ks), 1, True, True).indices.t()
        hit = top.eq(target.view(1, -1).expand_as(top))
        return [hit[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0)) for k in ks]


def _kd_div(logit_s: torch.Tensor, logit_t: torch.Tensor, T: float = KD_T) -> torch.Tensor:
    """RepDistiller's DistillKL: summed KL of the T-softened distributions, × T² / batch."""
    kl = F.kl_div(F.log_softmax(logit_s / T, dim=1), F.softmax(logit_t / T, dim=1), reduction="sum")
    return kl * T ** 2 / logit_s.shape[0]


def _train_set(data_root: str | Path | None, synthetic_images: int = 50_000):
    """torchvision CIFAR100 yielding (image, target, index), like RepDistiller's CIFAR100Instance; without a
    root, random images of its shape through the same per-image pipeline (for speed alone)."""
    import torchvision
    from torchvision import transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    if data_root is None:
        return _RandomCifar(transform, synthetic_images)

    class Instance(torchvision.datasets.CIFAR100):
        def __getitem__(self, index):
            return (*super().__getitem__(index), index)

    return Instance(str(data_root), train=True, download=False, transform=transform)


class _RandomCifar(torch.utils.data.Dataset):
    """`n` random 32×32 RGB images and labels of 100 classes, each through `transform` from a PIL image, as
    torchvision's CIFAR100 serves its own."""

    def __init__(self, transform, n: int):
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 100, n).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index], index


def _epochs(loader):
    """Batches epoch after epoch; each epoch starts fresh workers, as RepDistiller's epoch loop does."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def reference_throughput(teacher: nn.Module, student: nn.Module, data_root: str | Path | None,
                         device: str | torch.device, steps: int, warmup: int = 2, batch_size: int = 64,
                         workers: int | None = None, synthetic_images: int = 50_000) -> dict:
    """Images/s of `steps` RepDistiller KD steps, after `warmup` untimed ones (worker start-up included).

    `workers` defaults to RepDistiller's 8, capped at the CPU count; 0 loads in this process. The
    student is trained in place; the teacher is left in eval mode, untouched. CUDA is synced at both
    clock edges; the timed images are counted, so a short last batch of an epoch counts as short.
    """
    if steps < 1:
        raise ValueError(f"reference_throughput: steps must be at least 1, not {steps}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    workers = min(8, os.cpu_count() or 1) if workers is None else workers

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda or benchmark  # train_student.py turns it on with CUDA
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(_train_set(data_root, synthetic_images), batch_size=batch_size,
                                         shuffle=True, num_workers=workers)
    student.to(device).train()
    teacher.to(device).eval()
    # the optimizer sees the student only: RepDistiller appends the teacher after building it
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    batch_time, data_time, losses, top1, top5 = (_Meter() for _ in range(5))
    stream = _epochs(loader)
    images, clock = 0, start
    try:
        end = time.time()
        for idx in range(warmup + steps):
            if idx == warmup:
                synchronize(device)
                clock, images = time.perf_counter(), 0
            x, target, index = next(stream)
            data_time.update(time.time() - end)
            x = x.float()
            if device.type != "cpu":  # like `.cuda()`: blocking copies from pageable memory, each syncing
                x, target, index = x.to(device), target.to(device), index.to(device)

            logit_s = student(x)
            with torch.no_grad():
                logit_t = teacher(x)
            loss_kd = 0  # `--distill kd` has no third loss; `beta * 0` still joins the sum
            loss = GAMMA * F.cross_entropy(logit_s, target) + ALPHA * _kd_div(logit_s, logit_t) + BETA * loss_kd

            acc1, acc5 = _topk_accuracy(logit_s, target)
            losses.update(loss.item(), x.size(0))  # reads the loss back every step
            top1.update(acc1[0], x.size(0))
            top5.update(acc5[0], x.size(0))

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

            batch_time.update(time.time() - end)
            end = time.time()
            if idx % PRINT_FREQ == 0:  # the progress line reads the meters back; printing is left out
                _ = [float(m.val) for m in (top1, top5)]
            images += x.size(0)
        synchronize(device)
        seconds = time.perf_counter() - clock
    finally:
        del stream  # drops the live DataLoader iterator, which shuts its workers down
        torch.backends.cudnn.benchmark = benchmark
    return {"loop": "RepDistiller KD", "device": str(device), "batch_size": batch_size, "workers": workers,
            "warmup": warmup, "steps": steps, "images": images, "setup_s": clock - start,
            "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else 0.0,
            "loss": losses.avg, "top1": float(top1.avg) if top1.count else 0.0}
