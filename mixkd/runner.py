"""Run every run of a study, teachers before their students, skipping what is already complete."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import create_dataset
from .errors import MixkdError
from .provenance import environment, now
from .rundir import RunDir
from .study import RunSpec, Study
from .train import build_model, import_teacher, train_run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MixkdError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def describe(spec: RunSpec) -> str:
    c, d = spec.config, spec.config["distill"]
    if spec.role == "teacher":
        return f"teacher {spec.labels['name']} mix={c['mix']['name']}"
    if d is None:
        return f"scratch {c['model']} mix={c['mix']['name']} seed={c['seed']}"
    return (f"{spec.labels['teacher']}→{c['model']} mix={c['mix']['name']} T={d['temperature']:g} "
            f"view={d['mixed_view']} seed={c['seed']}")


def pending_runs(study: Study, out: Path, retry_failed: bool = False) -> list[RunSpec]:
    todo = {"pending", "running", *(["failed"] if retry_failed else [])}
    return [r for r in study.runs if RunDir(out, r.run_id).status() in todo]


def run_study(study: Study, out: Path, device: torch.device, data_root: str | None = None,
              retry_failed: bool = False) -> list[RunSpec]:
    """Train the study's unfinished runs; returns those trained. Tables are the caller's job."""
    todo = pending_runs(study, out, retry_failed)
    if not todo:
        return []
    params = {k: v for k, v in study.dataset.items() if k != "name"}
    data = create_dataset(study.dataset["name"], root=data_root, **params)
    specs = {r.run_id: r for r in study.runs}
    teachers: dict[str, torch.nn.Module] = {}
    env = environment(device)
    bar = tqdm(todo, unit="run", desc=study.name, disable=None, dynamic_ncols=True)
    for i, spec in enumerate(bar, 1):
        rundir = RunDir(out, spec.run_id)
        started = now()
        rundir.start(spec.config, spec.labels, spec.run_id)
        try:
            if "checkpoint" in spec.labels:
                result = import_teacher(spec.config, spec.labels["checkpoint"], data, device, rundir)
            else:
                teacher = _teacher(spec, specs, teachers, out, data, device)
                result = train_run(spec.config, data, device, rundir, teacher, describe(spec))
            result = {"status": "complete", **result}
        except Exception as e:  # recorded, and the study goes on: one bad run must not sink the grid
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        rundir.write_summary({"run_id": spec.run_id, **result, **env, "started_at": started, "finished_at": now()})
        line = f"[{i}/{len(todo)}] {spec.run_id} {describe(spec)}: " + (
            f"top1 {result['top1_last']:.4f} ({result['train_seconds']:.1f}s)" if result["status"] == "complete"
            else f"FAILED {result['error']}")
        bar.write(line, file=sys.stdout)
    return todo


def _teacher(spec: RunSpec, specs: dict[str, RunSpec], cache: dict, out: Path, data, device) -> torch.nn.Module | None:
    """The student's trained teacher, loaded once from its run directory and frozen in eval mode."""
    if spec.config["distill"] is None:
        return None
    tid = spec.config["distill"]["teacher"]
    if tid not in cache:
        rundir = RunDir(out, tid)
        if rundir.status() != "complete":
            raise MixkdError(f"teacher run {tid} is {rundir.status()}; its students cannot train")
        model = rundir.load_model(build_model(specs[tid].config, data))
        cache[tid] = model.to(device).eval()
    return cache[tid]
