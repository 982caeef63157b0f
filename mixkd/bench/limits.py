"""Compute lower bound for `mixkd bench`: FLOPs one KD step needs, over FLOP/s the device reached.

Why: an images/s figure means little alone; next to the time the arithmetic alone would take at the
device's own matmul rate it says how far from the hardware a loop is. Both numbers are measured here,
on the user's models and device; none is taken from a datasheet.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts: 2 per multiply-add of matmuls and
convolutions, forward and backward; norms, activations, pooling, losses and the optimizer count
nothing. So the bound is loose for memory-bound small nets, which is the point of showing it.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..engine import synchronize


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_flops(teacher: nn.Module | None, student: nn.Module, image_shape: tuple[int, ...] = (3, 32, 32),
                   num_classes: int = 100, batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
    """FLOPs per image of one KD step on random inputs: teacher forward under no_grad, student forward and
    backward of a cross-entropy loss. The models must already be on `device`.

    The backward is `torch.autograd.grad` over the student's parameters, as `loss.backward()` would run it:
    the images need no gradient, so the first layer's grad-input is not computed (nor counted). The models
    come back as they were: train/eval flags, BatchNorm statistics, no `.grad` left behind.
    """
    device = torch.device(device)
    x = torch.randn(batch_size, *image_shape, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    models = [m for m in (teacher, student) if m is not None]
    modes = [[(m, m.training) for m in model.modules()] for model in models]
    buffers = [[(b, b.clone()) for b in model.buffers()] for model in models]
    try:
        teacher_flops = 0
        if teacher is not None:
            teacher.eval()
            with torch.no_grad():
                teacher_flops = _count(lambda: teacher(x))
        student.train()
        params = [p for p in student.parameters() if p.requires_grad]

        def step():
            loss = nn.functional.cross_entropy(student(x), y)
            torch.autograd.grad(loss, params)

        student_flops = _count(step)
    finally:
        for saved_modes, saved in zip(modes, buffers):
            for m, training in saved_modes:
                m.training = training
            with torch.no_grad():
                for b, copy in saved:
                    b.copy_(copy)
    teacher_flops /= batch_size
    student_flops /= batch_size
    return {"teacher_forward": teacher_flops, "student_train": student_flops,
            "total": teacher_flops + student_flops}


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype | None = None, size: int | None = None,
                repeats: int | None = None) -> float:
    """FLOP/s of `repeats` square `size`×`size` matmuls after two warm-up calls, synced on CUDA.

    Defaults: bf16 and 8192 on CUDA, fp32 and 1024 on CPU (a fraction of a second on two cores). This is
    the rate this process reached, not a datasheet figure: the bound quotes no number we did not measure.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    size = size or (8192 if cuda else 1024)
    repeats = repeats or (50 if cuda else 8)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    for _ in range(2):
        torch.mm(a, b, out=out)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b, out=out)
    synchronize(device)
    seconds = time.perf_counter() - start
    return 2 * size ** 3 * repeats / seconds


def lower_bound_seconds(flops_per_image: float, images: int, peak: float) -> float:
    """Seconds `images` would take if every FLOP ran at `peak` FLOP/s."""
    return flops_per_image * images / peak
