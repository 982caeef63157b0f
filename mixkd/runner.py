"""Run every run of a study, teachers before their students, skipping what is already complete.

Orchestration: the output folder and its run directories are checked before anything starts, the runs to do
are grouped (`engine.lockstep_groups`) and handed to an executor (`mixkd.executors`), which runs each group
as the unit of work (`mixkd.work`). Imports point that way only: runner → executors → work → train.
"""

from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path

from tqdm.auto import tqdm

from .build import build_model
from .config import RunSpec
from .engine import lockstep_groups
from .errors import MixkdError
from .executors import EXECUTORS, ExecutorOptions
from .models.checkpoint import load_teacher_checkpoint
from .rundir import RunDir, check_writable
from .study import Study
from .work import Job, RunContext, progress_line, todo_statuses


def pending_runs(study: Study, out: Path, retry_failed: bool = False) -> list[RunSpec]:
    todo = todo_statuses(retry_failed)
    return [r for r in study.runs if RunDir(out, r.run_id).status() in todo]


def first_difference(saved, resolved, path: str = "") -> tuple[str, object, object] | None:
    """(field path, saved value, resolved value) of the first difference between two configs, or None."""
    if isinstance(saved, dict) and isinstance(resolved, dict):
        for key in sorted(saved.keys() | resolved.keys()):
            diff = first_difference(saved.get(key), resolved.get(key), f"{path}.{key}" if path else key)
            if diff:
                return diff
        return None
    return None if saved == resolved else (path, saved, resolved)


def check_saved_configs(study: Study, out: Path) -> None:
    """Refuse run directories mixkd cannot use (damaged files, a file for a folder) and any whose run was
    trained with another config than its id names, to resume or skip.

    Ids hash the resolved config, so the latter only happens when mixkd's defaults or resolution changed, or a
    directory was copied or edited; its results would silently stand for a config they were not run with.
    """
    for spec in study.runs:
        rundir = RunDir(out, spec.run_id)
        rundir.check_usable()
        rundir.read_summary()
        saved = rundir.read_config()
        diff = first_difference(saved, spec.config) if saved is not None else None
        if diff:
            field_path, saved, resolved = diff
            raise MixkdError(f"run {spec.run_id}: {rundir.path}/config.yaml has {field_path}={saved!r} but the study "
                             f"resolves it to {resolved!r}, so the id no longer names one config (mixkd's defaults "
                             f"changed, or the directory was copied or edited); move {rundir.path} aside to retrain it")


def reopen_damaged(study: Study, out: Path) -> None:
    """Complete runs that lack part of what they wrote (a line of their epoch log, their analyses: cut or deleted
    by something else) are done again, saying so, rather than leave their rows out of the tables without a word:
    from their last checkpoint when the log is whole, else from the start."""
    for spec in study.runs:
        rundir = RunDir(out, spec.run_id)
        if rundir.status() != "complete":
            continue
        problem = rundir.damage(spec.run.epochs)
        if problem:
            with rundir.claim() as held:
                if held:
                    print(f"run {spec.run_id}: {problem}; running it again", flush=True)
                    rundir.reopen()


def preflight(todo: list[RunSpec], ctx: RunContext) -> None:
    """Fail fast, before any run starts, on what would otherwise fail every run one by one: a missing
    dataset, a teacher checkpoint that does not fit its architecture."""
    data = ctx.data
    for spec in todo:
        if spec.run.imported:
            load_teacher_checkpoint(build_model(spec.run, data), spec.names.checkpoint)


def run_study(job: Job, executor: str = "local", options: ExecutorOptions = ExecutorOptions()) -> list[RunSpec]:
    """Train the study's unfinished runs, teachers first, with the named executor; returns those trained
    here (not those skipped for another runner). Tables are the caller's job."""
    run = EXECUTORS.get(executor, "--executor")
    check_writable(job.out)
    check_saved_configs(job.study, job.out)
    reopen_damaged(job.study, job.out)
    todo = [r for r in pending_runs(job.study, job.out, job.retry_failed)
            if job.only is None or r.run_id in job.only]  # a slice (`--only`): its runs alone
    ctx = RunContext(job)
    groups = lockstep_groups(todo, ctx.engine.lockstep)
    # checks the options, with or without work to do, and starts nothing yet; closed however this ends, so
    # that an interrupt ends the workers too
    with closing(run(groups, ctx, options)) as summaries:
        if not todo:
            return []
        preflight(todo, ctx)
        specs, trained = ctx.specs, []
        bar = tqdm(total=len(todo), unit="run", desc=job.study.name, disable=None, dynamic_ncols=True)
        for i, summary in enumerate(summaries, 1):
            spec = specs[summary["run_id"]]
            if summary["status"] != "skipped":
                trained.append(spec)
            bar.update()
            bar.write(f"[{i}/{len(todo)}] {progress_line(spec, summary)}", file=sys.stdout)
        bar.close()
    return trained
