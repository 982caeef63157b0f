"""Back end of `mixkd bench loader`: input pipelines' batches per second, torchvision's against mixkd's.

Why: mixkd keeps in-memory datasets on the device because per-sample PIL transforms and worker
processes, not the model, bound the speed of small-model distillation; at ImageNet scale JPEG decoding does,
which `imagefolder`'s `decode: device` moves onto the device. This measures both claims where the user runs:
the pipelines in one process, on the same device, producing the same normalised, augmented float batches on
that device. CIFAR-100 rows need its files; image-folder rows run on a generated folder of JPEGs. One-time
setup (building the dataset, moving it to the device, starting workers, the first batch) is timed apart from
the steady-state throughput; imports and writing the JPEGs count in neither.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import numpy as np
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


DEIT_AUGMENT = "rand-m9-mstd0.5-inc1"  # DeiT's and TransMix's RandAugment, on the device


def bench_loader(data_root: str | Path | None, device: str | torch.device = "cpu", batches: int = 200,
                 batch_size: int = 64, images: int = 512) -> list[dict]:
    """One row per pipeline: CIFAR-100's where `data_root` holds it, then those of a generated folder of
    `images` JPEGs, which time a tenth as many batches (an ImageNet-sized image is ~50× a CIFAR one)."""
    device = torch.device(device)
    cifar = _cifar_rows(data_root, device, batches, batch_size) if data_root else []
    return cifar + _imagefolder_rows(device, max(1, batches // 10), batch_size, images)


def _cifar_rows(data_root: str | Path, device: torch.device, batches: int, batch_size: int) -> list[dict]:
    """(a) torchvision CIFAR100 + transforms + DataLoader(2 workers), (b) DeviceLoader."""
    import torchvision
    from torchvision import transforms as T

    def torchvision_pipeline():
        train = torchvision.datasets.CIFAR100(str(data_root), train=True, download=False, transform=T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]))
        return _epochs(torch.utils.data.DataLoader(train, batch_size, shuffle=True, num_workers=2,
                                                   pin_memory=device.type == "cuda"), device)

    def device_pipeline(augment=None):
        data = create_dataset("cifar100", data_root)
        return lambda: _epochs(data.train_loader(batch_size, device, seed=0, augment=augment), device)

    rows = [_measure("torchvision DataLoader, 2 workers", torchvision_pipeline, device, batches, batch_size),
            _measure("mixkd DeviceLoader", device_pipeline(), device, batches, batch_size),
            _measure(f"mixkd DeviceLoader + {DEIT_AUGMENT}", device_pipeline(DEIT_AUGMENT), device, batches,
                     batch_size)]
    return [{"data": "cifar100", **r} for r in rows]


def _imagefolder_rows(device: torch.device, batches: int, batch_size: int, images: int) -> list[dict]:
    """The `imagefolder` training loader at 224 pixels on a generated folder: (a) `decode: pil`, (b) `decode:
    device`, each with 2 DataLoader workers."""
    with tempfile.TemporaryDirectory(prefix="mixkd-bench-") as tmp:
        root = jpeg_folder(Path(tmp), images)

        def pipeline(decode: str):
            ds = create_dataset("imagefolder", root, img_size=224, num_workers=2, decode=decode)
            return lambda: _epochs(ds.train_loader(batch_size, device, seed=0), device)

        rows = [_measure("PIL in 2 DataLoader workers", pipeline("pil"), device, batches, batch_size),
                _measure(f"decode_jpeg on {device.type}, batched", pipeline("device"), device, batches,
                         batch_size)]
    return [{"data": "imagefolder", **r} for r in rows]


def jpeg_folder(root: Path, images: int = 512, classes: int = 4, seed: int = 0) -> Path:
    """root/train/<class>/ with `images` JPEGs of about 256×256, and root/val/<class>/ with one per class.

    Smooth colour fields with mild noise, so that they compress (~15 KB at quality 90) and decode like
    photos, not like noise; three shapes, since a real folder mixes them and the device path groups by shape.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    shapes = [(256, 256), (256, 320), (320, 256)]
    for split, count in (("train", images), ("val", classes)):
        for k in range(count):
            (height, width), folder = shapes[k % len(shapes)], root / split / f"class{k % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            field = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
            pixels = np.asarray(field.resize((width, height), Image.BICUBIC), dtype=np.float32)
            pixels += rng.normal(0, 4, (height, width, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{k}.jpg", quality=90)
    return root


def format_loader_bench(rows: list[dict]) -> str:
    """A small table; `speedup` is each pipeline's batches/s over the first row of the same data."""
    base = {}
    for r in rows:
        base.setdefault(r["data"], r["batches_per_s"])
    width = max(36, *(len(r["pipeline"]) + 2 for r in rows))
    lines = [f"{'data':<13}{'pipeline':<{width}}{'device':>8}{'setup s':>10}{'batches/s':>12}{'images/s':>12}"
             f"{'speedup':>9}"]
    for r in rows:
        speedup = r["batches_per_s"] / base[r["data"]]
        lines.append(f"{r['data']:<13}{r['pipeline']:<{width}}{r['device']:>8}{r['setup_s']:>10.2f}"
                     f"{r['batches_per_s']:>12.1f}{r['images_per_s']:>12.0f}{speedup:>8.1f}×")
    return "\n".join(lines)


def print_loader_bench(rows: list[dict], file: TextIO | None = None) -> None:
    print(format_loader_bench(rows), file=file or sys.stdout)
