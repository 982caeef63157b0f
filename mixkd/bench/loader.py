"""Back end of `mixkd bench loader`: CIFAR-100 batches per second, torchvision's pipeline vs the device loader.

Why: mixkd keeps in-memory datasets on the device because per-sample PIL transforms and worker
processes, not the model, bound the speed of small-model distillation. This measures that claim where
the user runs: both pipelines in one process, on the same device, producing the same normalised,
augmented float batches on that device. One-time setup (building the dataset, moving it to the
device, starting workers, the first batch) is timed apart from the steady-state throughput; imports
count in neither.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import torch

from ..data import create_dataset
from ..data.cifar import CIFAR100_MEAN, CIFAR100_STD
from ..engine import synchronize


def _measure(name: str, make: Callable[[], Iterator], device: torch.device, batches: int, batch_size: int) -> dict:
    """Time `make()` plus its first batch as setup, then `batches` more batches, syncing CUDA at each clock."""
    synchronize(device)
    start = time.perf_counter()
    stream = make()
    next(stream)
    synchronize(device)
    ready = time.perf_counter()
    for _ in range(batches):
        next(stream)
    synchronize(device)
    seconds = time.perf_counter() - ready
    stream.close()  # shuts down DataLoader workers before the next pipeline runs
    return {"pipeline": name, "device": str(device), "batch_size": batch_size, "batches": batches,
            "setup_s": ready - start, "seconds": seconds, "batches_per_s": batches / seconds,
            "images_per_s": batches * batch_size / seconds}


def _epochs(loader: Iterable, device: torch.device):
    """Batches of `loader` on `device`, epoch after epoch (a training loader's sample indices dropped)."""
    for x, y, *_ in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def bench_loader(data_root: str | Path, device: str | torch.device = "cpu", batches: int = 200,
                 batch_size: int = 64) -> list[dict]:
    """One row per pipeline: (a) torchvision CIFAR100 + transforms + DataLoader(2 workers), (b) DeviceLoader."""
    import torchvision
    from torchvision import transforms as T

    device = torch.device(device)

    def torchvision_pipeline():
        train = torchvision.datasets.CIFAR100(str(data_root), train=True, download=False, transform=T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]))
        return _epochs(torch.utils.data.DataLoader(train, batch_size, shuffle=True, num_workers=2,
                                                   pin_memory=device.type == "cuda"), device)

    def device_pipeline():
        return _epochs(create_dataset("cifar100", data_root).train_loader(batch_size, device, seed=0), device)

    return [_measure("torchvision DataLoader, 2 workers", torchvision_pipeline, device, batches, batch_size),
            _measure("mixkd DeviceLoader", device_pipeline, device, batches, batch_size)]


def format_loader_bench(rows: list[dict]) -> str:
    """A small table; `speedup` is each pipeline's batches/s over the first row's."""
    base = rows[0]["batches_per_s"]
    lines = [f"{'pipeline':<36}{'device':>8}{'setup s':>10}{'batches/s':>12}{'images/s':>12}{'speedup':>9}"]
    for r in rows:
        lines.append(f"{r['pipeline']:<36}{r['device']:>8}{r['setup_s']:>10.2f}{r['batches_per_s']:>12.1f}"
                     f"{r['images_per_s']:>12.0f}{r['batches_per_s'] / base:>8.1f}×")
    return "\n".join(lines)


def print_loader_bench(rows: list[dict], file: TextIO | None = None) -> None:
    print(format_loader_bench(rows), file=file or sys.stdout)
