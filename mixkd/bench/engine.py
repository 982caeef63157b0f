"""Back end of `mixkd bench`: mixkd's training engine against a RepDistiller-style loop, in one process.

Why: speed claims must be measured where the user runs, against the loop people use today, on the same
device, data and models. For each teacher→student pair this times (a) `reference.reference_throughput`
and (b) mixkd's engine (`train.Lockstep`) with one student and with several in lockstep, all from the
paper recipe (batch 64, SGD 0.05, KD T=4, no mixing), and sets each beside the compute lower bound
(`limits`): the arithmetic of one run at the device's measured matmul rate.

Images/s counts student images: a lockstep group of 8 trains 8 runs, each on every image, so its
projected time per run is the group's time over 8. Projections cover training steps only; the
per-epoch evaluation adds a forward over the test set.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import platform
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from .. import provenance
from ..build import frozen_teacher
from ..config import RunConfig
from ..data import create_dataset
from ..engine import Engine, synchronize
from ..models import create_model
from ..study import parse_study
from ..train import Lockstep, Member
from .limits import lower_bound_seconds, matmul_peak, training_flops
from .reference import reference_throughput

PAIRS = (("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4"))
EPOCHS, TRAIN_IMAGES = 240, 50_000


def _student_runs(teacher: str, student: str, n: int) -> list[RunConfig]:
    """n runs of the paper recipe that differ only in temperature: what lockstep trains together."""
    study = parse_study({"name": "bench", "dataset": "cifar100", "teachers": {"t": {"model": teacher}},
                         "students": [student], "baselines": False,
                         "grid": {"temperature": [4.0 + i for i in range(n)], "mixed_view": ["none"]}})
    return [r.run for r in study.runs if r.role == "student"]


def engine_throughput(teacher: torch.nn.Module, runs: list[RunConfig], data, engine, steps: int,
                      warmup: int) -> dict:
    """Images/s of `len(runs)` students stepped in lockstep behind one teacher forward per batch."""
    device = engine.device
    members = [Member(r, data, engine, teacher) for r in runs]
    for m in members:
        m.distiller.train()
    group = Lockstep.of(members, data, engine, teacher)
    group.begin_epoch()  # fuses the students where `engine.fuse` says so
    loader = group.loader
    batches = itertools.chain.from_iterable(itertools.repeat(loader))

    start = time.perf_counter()
    for _ in range(warmup):  # compilation, cuDNN autotuning, allocator warm-up
        group.step(*next(batches), 1, len(loader))
    synchronize(device)
    clock, images = time.perf_counter(), 0
    for _ in range(steps):
        x, y, index = next(batches)
        group.step(x, y, index, 1, len(loader))
        images += len(y)
    synchronize(device)
    seconds = time.perf_counter() - clock
    errors = [m.error for m in members if m.error is not None]
    if errors:
        raise errors[0]
    return {"setup_s": clock - start, "seconds": seconds, "steps": steps,
            "images_per_s": images * len(members) / seconds}


def bench_engine(data_root: str | Path | None, device: torch.device, pairs=PAIRS, lockstep=(4, 8),
                 steps: int = 100, warmup: int = 10, workers: int | None = None, engine: Engine | None = None,
                 log=print, synthetic_images: int = 50_000) -> list[dict]:
    """One row per (pair, mode): reference, engine single, engine lockstep N and engine fused N (the same N
    students trained as one fused model, `mixkd.fuse`)."""
    # without a root, random images of CIFAR-100's shape (`synthetic_images` of them): speed alone
    data = create_dataset("cifar100", data_root) if data_root is not None else create_dataset(
        "synthetic", num_classes=100, train_size=synthetic_images, test_size=64, img_size=32)
    device_engine = (engine or Engine()).resolve(device)
    peak = matmul_peak(device)
    rows = []
    for t_name, s_name in pairs:
        teacher = create_model(t_name, num_classes=100).to(device).eval()
        flops = training_flops(teacher, create_model(s_name, num_classes=100).to(device), batch_size=2,
                               device=device)
        pair = f"{t_name}->{s_name}"
        common = {"pair": pair, "device": _device_name(device), "batch_size": 64, "peak_flops": peak,
                  "data": "cifar100" if data_root is not None else "random images of CIFAR-100's shape",
                  **device_engine.record(), **environment()}

        def row(mode: str, runs: int, measured: dict, ref_rate: float) -> dict:
            per_run_flops = flops["student_train"] + flops["teacher_forward"] / runs  # one teacher forward shared
            rate = measured["images_per_s"]
            log(f"  {pair:<24} {mode:<20} {rate:>10.0f} images/s")
            return {**common, "mode": mode, "runs": runs, "steps": measured["steps"], "images_per_s": rate,
                    "ratio_to_reference": rate / ref_rate, "projected_run_s": EPOCHS * TRAIN_IMAGES / rate,
                    "lower_bound_s": lower_bound_seconds(per_run_flops, EPOCHS * TRAIN_IMAGES, peak),
                    "setup_s": measured["setup_s"]}

        ref = reference_throughput(teacher, create_model(s_name, num_classes=100), data_root, device, steps, warmup,
                                   workers=workers, synthetic_images=synthetic_images)
        rows.append(row("reference", 1, ref, ref["images_per_s"]))
        fused_engine = dataclasses.replace(device_engine, fuse=True)
        for n, engine_n in [(1, device_engine), *((n, e) for n in lockstep for e in (device_engine, fused_engine))]:
            measured = engine_throughput(frozen_teacher(copy.deepcopy(teacher), engine_n),
                                         _student_runs(t_name, s_name, n), data, engine_n, steps, warmup)
            mode = "engine" if n == 1 else f"engine {'fused' if engine_n.fuse else 'lockstep'} {n}"
            rows.append({**row(mode, n, measured, ref["images_per_s"]), **engine_n.record()})
            if engine_n.fuse:  # the same N students unfused: the row before
                rows[-1]["ratio_to_lockstep"] = measured["images_per_s"] / rows[-2]["images_per_s"]
    return rows


def _device_name(device: torch.device) -> str:
    name = provenance.environment(device)["device_name"]
    return name if device.type == "cuda" else f"cpu ({name}, {torch.get_num_threads()} threads)"


def environment() -> dict:
    """What a recorded table needs beside its numbers: versions, command and date."""
    return {"date": provenance.now(), "command": " ".join(sys.argv),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}


def format_engine_bench(rows: list[dict]) -> str:
    lines = [f"{'pair':<24}{'mode':<18}{'images/s':>10}{'× ref':>8}{'240-ep run':>12}{'lower bound':>13}"
             f"{'of bound':>10}{'fused/lockstep':>16}"]
    for r in rows:
        fused = f"{r['ratio_to_lockstep']:>15.2f}×" if "ratio_to_lockstep" in r else ""
        lines.append(f"{r['pair']:<24}{r['mode']:<18}{r['images_per_s']:>10.0f}{r['ratio_to_reference']:>7.1f}×"
                     f"{_duration(r['projected_run_s']):>12}{_duration(r['lower_bound_s']):>13}"
                     f"{r['lower_bound_s'] / r['projected_run_s']:>10.1%}{fused}")
    first = rows[0]
    lines.append(f"device: {first['device']}; measured matmul peak {first['peak_flops'] / 1e12:.2f} TFLOP/s; engine: "
                 f"{first['engine_precision']}, channels_last={first['engine_channels_last']}, "
                 f"optimizer={first['engine_optimizer']}, compile={first['engine_compile']}")
    lines.append("240-ep run: projected training time of one 240-epoch CIFAR run (lockstep: per run); "
                 "lower bound: its FLOPs at the measured matmul peak; of bound: lower bound / projected time")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_json(rows: list[dict], path: str | Path) -> None:
    """One object per measured configuration, each with its device, versions, command and date."""
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def print_engine_bench(rows: list[dict], file: TextIO | None = None) -> None:
    print(format_engine_bench(rows), file=file or sys.stdout)
