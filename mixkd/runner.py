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
from .analysis import analyse_run
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


class RunContext:
    """What the runs of one study share within one process: the dataset and the loaded teachers."""

    def __init__(self, study: Study, out: Path, device: torch.device, data_root: str | None = None):
        self.study, self.out, self.device, self.data_root = study, Path(out), device, data_root
        self.specs = {r.run_id: r for r in study.runs}
        self.env = environment(device)
        self._data = None
        self._teachers: dict[str, torch.nn.Module] = {}

    @property
    def data(self):
        if self._data is None:
            params = {k: v for k, v in self.study.dataset.items() if k != "name"}
            self._data = create_dataset(self.study.dataset["name"], root=self.data_root, **params)
        return self._data

    def teacher(self, spec: RunSpec) -> torch.nn.Module | None:
        """The student's trained teacher, loaded once from its run directory and frozen in eval mode."""
        if spec.config["distill"] is None:
            return None
        tid = spec.config["distill"]["teacher"]
        if tid not in self._teachers:
            rundir = RunDir(self.out, tid)
            if rundir.status() != "complete":
                raise MixkdError(f"teacher run {tid} is {rundir.status()}; its students cannot train")
            model = rundir.load_model(build_model(self.specs[tid].config, self.data))
            self._teachers[tid] = model.to(self.device).eval()
        return self._teachers[tid]


def execute_run(spec: RunSpec, ctx: RunContext) -> dict:
    """Train (or import) one run, analyse it, and write its summary; never raises for a failed run."""
    rundir = RunDir(ctx.out, spec.run_id)
    started = now()
    rundir.start(spec.config, spec.labels, spec.run_id)
    try:
        teacher = None
        if "checkpoint" in spec.labels:
            result, model = import_teacher(spec.config, spec.labels["checkpoint"], ctx.data, ctx.device, rundir)
        else:
            teacher = ctx.teacher(spec)
            result, model = train_run(spec.config, ctx.data, ctx.device, rundir, teacher, describe(spec))
        rundir.write_analysis(analyse_run(spec.config, model, teacher, ctx.data, ctx.device))
        result = {"status": "complete", **result}
    except Exception as e:  # recorded, and the study goes on: one bad run must not sink the grid
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    summary = {"run_id": spec.run_id, **result, **ctx.env, "started_at": started, "finished_at": now()}
    rundir.write_summary(summary)
    return summary


def run_study(study: Study, out: Path, device: torch.device, data_root: str | None = None,
              retry_failed: bool = False) -> list[RunSpec]:
    """Train the study's unfinished runs, teachers first; returns those trained. Tables are the caller's job."""
    todo = pending_runs(study, out, retry_failed)
    ctx = RunContext(study, out, device, data_root)
    bar = tqdm(todo, unit="run", desc=study.name, disable=None, dynamic_ncols=True)
    for i, spec in enumerate(bar, 1):
        summary = execute_run(spec, ctx)
        bar.write(f"[{i}/{len(todo)}] {spec.run_id} {describe(spec)}: " + (
            f"top1 {summary['top1_last']:.4f} ({summary['train_seconds']:.1f}s)" if summary["status"] == "complete"
            else f"FAILED {summary['error']}"), file=sys.stdout)
    return todo
