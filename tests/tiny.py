"""The tiny study the runner, executor, engine, resilience and analysis tests train (synthetic 8×8 images, a
cnn_small teacher, a cnn_tiny student: seconds on a CPU), and the two steps every such test takes with it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import mixkd
from mixkd.cli import main
from mixkd.rundir import RunDir

RECIPE = {"epochs": 2, "batch_size": 32, "schedule": "cosine", "eval_batch_size": 64}


def tiny_study(name: str, **overrides) -> dict:
    """The tiny study with any top-level key replaced."""
    return {"name": name, "dataset": {"name": "synthetic", "train_size": 96, "test_size": 32}, "recipe": dict(RECIPE),
            "teachers": {"t": {"model": "cnn_small"}}, "students": ["cnn_tiny"], **overrides}


def write(tmp_path, study: dict, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study))
    return path


def run(path, out, *extra) -> int:
    """`mixkd run` on the CPU; its exit status."""
    return main(["run", str(path), "--out", str(out), "--device", "cpu", *extra])


def image_folder(root, classes=("ant", "bee", "cat"), per_class: int = 20, size: int = 32,
                 suffix: str = "png"):
    """An ImageNet-style tree of random images: root/{train,val}/<class>/<i>.<suffix> (png or jpg), `per_class`
    in each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / cls / f"{i}.{suffix}")
    return root


# --- a mixkd process beside the test, for kills and signals ---------------------------------------------

TIMEOUT = 120  # seconds any one subprocess may take, far beyond what it needs


def mixkd_command(path, out) -> list[str]:
    return [sys.executable, "-m", "mixkd.cli", "run", str(path), "--out", str(out), "--device", "cpu"]


def subprocess_env() -> dict:
    """This checkout's mixkd, whichever one the venv has installed; one thread each, as two mixkd processes
    share the cores here and OpenMP threads that wait on each other slow both down many times over."""
    return {**os.environ, "PYTHONPATH": str(Path(mixkd.__file__).parents[1]), "OMP_NUM_THREADS": "1"}


def start(path, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([*mixkd_command(path, out), *extra], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def poll(condition, process: subprocess.Popen, what: str):
    """Wait for `condition()` to be truthy while `process` runs; no assumption about the machine's speed."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if process.poll() is not None:
            pytest.fail(f"mixkd exited ({process.returncode}) before {what}:\n{process.stdout.read()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no {what} within {TIMEOUT}s")


def summaries(out: Path, study) -> dict[str, dict | None]:
    return {r.run_id: RunDir(out, r.run_id).read_summary() for r in study.runs}


def comparable(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.read_csv(out / "runs.csv").set_index("run_id").sort_index()
    metrics = [c for c in runs.columns if c.endswith(("_last", "_best")) or c == "best_epoch"]
    epochs = pd.read_parquet(out / "epochs.parquet").drop(columns="seconds")
    return runs[["status", *metrics]], epochs.sort_values(["run_id", "epoch"], ignore_index=True)
