"""`mixkd bench device-check`: what a session lent a GPU should measure first, in one call.

GPU time is scarce and comes without network, so everything it should answer runs from one command of at
most ~8 minutes that needs nothing but the repository: (1) the tests that need CUDA, (2) `mixkd bench` on
real CIFAR-100 if a root is given, else on random images of its shape (the throughput does not depend on
the pixels), with fused lockstep beside unfused, (3) `mixkd bench loader` (image folders: PIL against
decode on the device; with a root, CIFAR-100's loaders and RandAugment on the device), (4) a short real
training of resnet56 → resnet20 in fused lockstep of 8 through `mixkd run`. Each part's outcome, time and numbers go to JSON under `--out`,
with the device, versions, command and date, to be committed under `results/bench/`. `--quick` is the same
on the CPU at toy sizes: the test suite runs it so the check cannot rot.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .engine import bench_engine, environment, format_engine_bench
from .loader import bench_loader, format_loader_bench

# (teacher, student) pairs, lockstep sizes, timed and warm-up steps, training epochs: full, and --quick
FULL = {"pairs": (("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4")),
        "lockstep": (8,), "steps": 50, "warmup": 10, "images": 50_000, "teacher": "resnet56",
        "student": "resnet20", "epochs": 2, "train_size": 10_000, "test_size": 10_000,
        "loader": {"batches": 200, "batch_size": 64, "images": 512}}
QUICK = {"pairs": (("resnet8", "resnet8"),), "lockstep": (2,), "steps": 1, "warmup": 1, "images": 256,
         "teacher": "resnet8", "student": "resnet8", "epochs": 1, "train_size": 64, "test_size": 32,
         "loader": {"batches": 10, "batch_size": 8, "images": 16}}


def device_check(out: str | Path, device: torch.device, data_root: str | None = None, quick: bool = False,
                 log=print) -> dict:
    """Run the three parts (each on its own: one failing does not stop the others); return and write
    `out/device-check.json`. The bench table also goes to `bench.json` and `bench.txt`, the tests' and the
    training's output to `tests.txt` and `train.txt`, its runs and epochs to `train-runs.csv` and
    `train-epochs.csv`: seven files, one folder, as a device call brings back at most eight."""
    size, out = QUICK if quick else FULL, Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": str(device), "quick": quick, "data": data_root or "random images of CIFAR-100's shape",
              **environment(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    for name, part in (("tests", _tests), ("bench", _bench), ("loader", _loader), ("train", _train)):
        clock = time.perf_counter()
        log(f"device-check: {name} ...")
        try:
            report[name] = {"ok": True, **part(out, device, data_root, size)}
        except Exception as e:  # noqa: BLE001 - recorded: the other parts still run
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        report[name]["seconds"] = time.perf_counter() - clock
        log(f"device-check: {name} {'ok' if report[name]['ok'] else 'FAILED'} "
            f"in {report[name]['seconds']:.0f} s")
    (out / "device-check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def _tests(out: Path, device: torch.device, data_root: str | None, size: dict) -> dict:
    """The tests that need CUDA (they skip without it): those whose id names cuda."""
    tests = Path(__file__).resolve().parents[2] / "tests"
    if not tests.is_dir():
        raise FileNotFoundError(f"{tests}: the device check runs from a checkout of the repository")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                           str(tests)], capture_output=True, text=True, cwd=tests.parent)
    (out / "tests.txt").write_text(done.stdout[-20_000:] + done.stderr[-5_000:])
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode not in (0, 5):  # 5: none collected
        raise RuntimeError(f"pytest exited {done.returncode}: {summary}")
    return {"summary": summary}


def _bench(out: Path, device: torch.device, data_root: str | None, size: dict) -> dict:
    rows = bench_engine(data_root, device, size["pairs"], size["lockstep"], size["steps"], size["warmup"],
                        synthetic_images=size["images"], log=lambda line: None)
    (out / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "bench.txt").write_text(format_engine_bench(rows) + "\n")
    return {"rows": len(rows), "images_per_s": {f"{r['pair']} {r['mode']}": round(r["images_per_s"], 1)
                                                for r in rows}}


def _loader(out: Path, device: torch.device, data_root: str | None, size: dict) -> dict:
    """`mixkd bench loader`: image folders decoded by PIL in workers against `decode: device` (which of the two
    is faster on a GPU is what it answers), and with a root CIFAR-100's loaders, RandAugment on the device
    too; its table goes under the engine's in bench.txt."""
    rows = bench_loader(data_root, device, **size["loader"])
    with (out / "bench.txt").open("a") as f:
        f.write("\n" + format_loader_bench(rows) + "\n")
    return {"images_per_s": {f"{r['data']} {r['pipeline']}": round(r["images_per_s"], 1) for r in rows}}


def _train(out: Path, device: torch.device, data_root: str | None, size: dict) -> dict:
    """A teacher and 8 students (T = 1..8) in one fused lockstep group, through `mixkd run` in a process of its
    own (on 10,000 training images: a few minutes of a GPU, not a result)."""
    dataset = ({"name": "cifar100", "train_size": size["train_size"]} if data_root else
               {"name": "synthetic", "num_classes": 100, "img_size": 32, "train_size": size["train_size"],
                "test_size": size["test_size"]})
    study = {"name": "device_check", "dataset": dataset, "baselines": False,
             "recipe": {"epochs": size["epochs"], "batch_size": 64, "lr": 0.05,
                        "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}},
             "teachers": {"t": {"model": size["teacher"]}}, "students": [size["student"]],
             "grid": {"temperature": list(range(1, 9)), "mixed_view": ["none"], "loss": ["kd"], "seeds": [0]},
             "engine": {"lockstep": 8, "fuse": True}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"  # JSON is YAML
        path.write_text(json.dumps(study))
        args = [sys.executable, "-m", "mixkd", "run", str(path), "--out", str(Path(tmp) / "out"),
                "--device", device.type, *(["--data-root", data_root] if data_root else [])]
        done = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        (out / "train.txt").write_text(done.stdout[-20_000:] + done.stderr[-5_000:])
        status = done.returncode
        runs = pd.read_csv(Path(tmp) / "out" / "runs.csv")
        runs.to_csv(out / "train-runs.csv", index=False)
        pd.read_parquet(Path(tmp) / "out" / "epochs.parquet").to_csv(out / "train-epochs.csv", index=False)
        shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
    if status != 0:
        raise RuntimeError(f"mixkd run exited {status}")
    students = runs[runs["role"] == "student"]
    return {"runs": len(runs), "fused_size": int(students["fused_size"].max()),
            "student_images_per_s": round(float(students["images_per_s"].mean()), 1),
            "student_top1": round(float(students["top1_last"].mean()), 4)}
