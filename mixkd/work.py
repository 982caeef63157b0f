"""The unit of work: a lockstep group of runs (`engine.lockstep_groups`; one run when lockstep is 1), claimed,
trained or imported, analysed and recorded. Every executor (`mixkd.executors`) runs `execute_group`.

It claims each run's lock, so two runners on one study share its runs instead of training any twice, and each
run resumes from its last checkpoint. What a run directory holds is decided here: the config when a run
starts, an imported teacher's checkpoint, the analyses and the summary; the training loop adds the epoch log
and the checkpoints through the `RunDir` it is handed.
"""

from __future__ import annotations

import time
import traceback
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .analysis import analyse_run
from .build import build_model, frozen_teacher, import_teacher
from .config import Component, RunSpec
from .data import create_dataset
from .engine import resolve_device
from .errors import MixkdError
from .provenance import environment, now
from .ranks import RankFailed, Ranks, Tasks, check_devices, launch
from .rundir import RunDir
from .study import Study
from .trackers import RunTrackers, TrackedJournal
from .train import STOPS_THE_STUDY, train_group


def describe(spec: RunSpec) -> str:
    """A run as the study names it (a student by its name: two may share a model)."""
    run, d, name = spec.run, spec.run.distill, spec.names.name
    if run.is_teacher:
        return f"teacher {name} mix={run.mix.name}"
    if d is None:
        return f"scratch {name} mix={run.mix.name} seed={run.seed}"
    return (f"{spec.names.teacher}→{name} mix={run.mix.name} T={d.temperature:g} view={d.mixed_view} "
            f"loss={d.loss.name} seed={run.seed}")


def progress_line(spec: RunSpec, summary: dict) -> str:
    outcome = {"complete": lambda s: f"top1 {s['top1_last']:.4f} ({s['wall_seconds']:.1f}s)",
               "failed": lambda s: f"FAILED {s['error']}",
               "skipped": lambda s: f"skipped: {s['reason']}"}[summary["status"]]
    return f"{spec.run_id} {describe(spec)}: {outcome(summary)}"


def todo_statuses(retry_failed: bool) -> set[str]:
    return {"pending", "running", *(["failed"] if retry_failed else [])}


@dataclass
class Job:
    """What a worker needs to rebuild a study's RunContext; picklable, so it ships to worker processes."""

    study: Study
    out: Path
    device: str = "auto"  # resolved where the run executes: a Ray worker may have a GPU its head lacks
    data_root: str | None = None
    retry_failed: bool = False
    checkpoint_every: int = 1
    only: frozenset[str] | None = None  # the run ids of a slice (`--only`); None: the whole study
    track: tuple[Component, ...] = ()  # the experiment trackers each run also logs to (`mixkd.trackers`)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # one RunContext per job and process


class RunContext:
    """What the runs of one study share within one process: the dataset and the loaded teachers. In a rank of a
    run across devices (`ranks`), its device is the rank's own. Where a run's ranks are a cluster job's tasks,
    rank 0's task claims the run with `tasks` (`run_as_task`)."""

    def __init__(self, job: Job, ranks: Ranks | None = None, tasks: Tasks | None = None):
        self.job, self.study, self.out, self.ranks, self.tasks = job, job.study, Path(job.out), ranks, tasks
        self.device = resolve_device(job.device)
        if ranks is not None and self.device.type == "cuda":  # a task bound to its own GPU sees it alone
            self.device = torch.device("cuda", ranks.local if torch.cuda.device_count() > 1 else 0)
        self.engine = self.study.file.engine.resolve(self.device)
        self.specs = {r.run_id: r for r in self.study.runs}
        self.env = environment(self.device)
        self._data = None
        self._teachers: dict[str, torch.nn.Module] = {}

    @property
    def data(self):
        if self._data is None:
            dataset = self.study.dataset
            self._data = create_dataset(dataset.name, root=self.job.data_root, **dataset.kwargs())
        return self._data

    def teacher(self, spec: RunSpec) -> torch.nn.Module | None:
        """The student's trained teacher, loaded once from its run directory (`build.frozen_teacher`)."""
        tid = spec.run.teacher
        if tid is None:
            return None
        if tid not in self._teachers:
            self._teachers[tid] = frozen_teacher(self._finished_teacher(tid), self.engine)
        return self._teachers[tid]

    def _finished_teacher(self, tid: str) -> torch.nn.Module:
        """Teacher run `tid`'s model once the run is complete: waited for while another runner trains it, and
        trained here when none does (the runner that started it died, or its checkpoint is gone), so its
        students are never failed for it. Raises TeacherNotReady when the teacher failed."""
        rundir, trained_here, spec = RunDir(self.out, tid), False, self.specs[tid]
        while True:
            wait_for_other_runner(rundir, f"teacher run {tid}")
            status = rundir.status()
            model = rundir.load_model(build_model(spec.run, self.data)) if status == "complete" else None
            if model is not None:
                return model
            if status == "failed" or trained_here:
                raise TeacherNotReady(f"teacher run {tid} is {status}: its students stay pending until it is "
                                      f"complete (--retry-failed reruns it)")
            lacking = " without a checkpoint" if status == "complete" else ""
            print(f"teacher run {tid} is {status}{lacking} and no runner holds it: training it here",
                  flush=True)
            with rundir.claim() as held:
                if held and status == "complete":
                    rundir.reopen()
            (summary,) = execute_group([spec], self)
            print(progress_line(spec, summary), flush=True)
            trained_here = summary["status"] != "skipped"  # skipped: another runner claimed it meanwhile


class TeacherNotReady(MixkdError):
    """A student's teacher failed: the student is left to do, not failed, since nothing is wrong with it."""


def wait_for_other_runner(rundir: RunDir, what: str) -> None:
    """A teacher another runner is training: wait for it rather than fail its students."""
    if rundir.is_claimed():
        print(f"waiting for {what}: another runner is training it", flush=True)
        rundir.wait_until_released()


def execute_group(specs: list[RunSpec], ctx: RunContext) -> list[dict]:
    """Claim the group's runs, then train (or import) those still to do together, analyse each and write
    its summary. A run another runner holds, or has finished since this study started, is skipped.
    Returns one summary per run; never raises for a failed run."""
    with ExitStack() as held_locks:
        summaries, mine = [], []
        for spec in specs:
            rundir = RunDir(ctx.out, spec.run_id)
            if not held_locks.enter_context(rundir.claim()):
                summaries.append(skipped(spec, "another runner is training it"))
            elif (status := rundir.status()) not in todo_statuses(ctx.job.retry_failed):
                summaries.append(skipped(spec, f"already {status}, by another runner"))
            else:
                mine.append((spec, rundir))
        return summaries + (_run_group(mine, ctx) if mine else [])


def skipped(spec: RunSpec, reason: str) -> dict:
    """Not written anywhere: the run belongs to whoever holds it."""
    return {"run_id": spec.run_id, "status": "skipped", "reason": reason}


def failure(e: BaseException) -> dict:
    return {"status": "failed", "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(traceback.format_exception(e))}


def _run_group(runs: list[tuple[RunSpec, RunDir]], ctx: RunContext) -> list[dict]:
    if ctx.ranks is None and devices(runs[0][0]) > 1:  # a group of one (`engine.lockstep_key`)
        return [_across_devices(*runs[0], ctx)]
    trackers = [RunTrackers.of(ctx.job.track, spec, ctx.study.name, ctx.out) for spec, _ in runs]
    try:
        return _train_and_record(runs, trackers, ctx)
    finally:  # tracker runs a group cut short (Ctrl-C, a full disk) left open are ended, marked as such
        for t in trackers:
            t.close()


def _train_and_record(runs: list[tuple[RunSpec, RunDir]], trackers: list[RunTrackers],
                      ctx: RunContext) -> list[dict]:
    started, clock = now(), time.perf_counter()
    lead, teacher = runs[0][0], None
    try:
        teacher = ctx.teacher(lead)  # before any run starts: this runner may have to train the teacher first
        started, clock = now(), time.perf_counter()
        ctx.engine.claim_threads()  # in every executor's processes alike: same thread count, same numbers
        for spec, rundir in runs:
            rundir.start(spec)
        if lead.run.imported:  # an imported teacher is a group of one
            outcomes = [_imported(lead, runs[0][1], ctx)]
        else:
            journals = [TrackedJournal(d, t, ctx.data.num_train_images) for (_, d), t in zip(runs, trackers)]
            members = train_group([s.run for s, _ in runs], journals, ctx.data, ctx.engine, teacher,
                                  describe(lead), ctx.job.checkpoint_every, ctx.ranks)
            outcomes = [m.error or (m.result(ctx.data, len(runs)), m.model,
                                        m.ema.module if m.ema is not None else None)
                        for m in members]
    except TeacherNotReady as e:
        return [skipped(spec, str(e)) for spec, _ in runs]
    except STOPS_THE_STUDY:
        raise
    except Exception as e:  # what every run of the group shares failed (data, teacher, mixing): all fail
        if ctx.ranks is not None:  # rank 0 of a run across devices: the launcher records the first rank's error
            raise
        outcomes = [e] * len(runs)
    summaries = []
    for (spec, rundir), outcome, tracker in zip(runs, outcomes, trackers):
        if isinstance(outcome, BaseException):
            result = failure(outcome)
        else:
            result, model, ema = outcome
            try:
                rundir.write_analysis(analyse_run(spec.run, model, teacher, ctx.data, ctx.device)
                                      + (ema_rows(analyse_run(spec.run, ema, teacher, ctx.data, ctx.device))
                                         if ema is not None else []))
                result = {"status": "complete", **result}
            except STOPS_THE_STUDY:
                raise
            except Exception as e:  # recorded, and the study goes on: one bad run must not sink the grid
                result = failure(e)
        # wall_seconds: this attempt's group training and evaluation, plus the analyses up to this run's
        summary = {"run_id": spec.run_id, **result, **ctx.env, "started_at": started, "finished_at": now(),
                   "wall_seconds": time.perf_counter() - clock}
        rundir.write_summary(summary)
        tracker.finish(summary)
        summaries.append(summary)
    return summaries


def _imported(spec: RunSpec, rundir: RunDir, ctx: RunContext) -> tuple[dict, torch.nn.Module, None]:
    """A teacher given as a checkpoint: evaluated, and cached in its run directory like a trained one."""
    result, model = import_teacher(spec.run, spec.names.checkpoint, ctx.data, ctx.engine)
    rundir.save_checkpoint({"model": model.state_dict()})
    return result, model, None


def ema_rows(rows: list[dict]) -> list[dict]:
    """The analyses of a run's EMA of the weights (`recipe.ema_decay`), beside the model's: `ema_` before each
    metric's name."""
    return [{**r, "metric": f"ema_{r['metric']}"} for r in rows]


# --- one run across devices ------------------------------------------------------------------------------------


def devices(spec: RunSpec) -> int:
    return spec.run.recipe.devices if spec.run.recipe else 1


def _across_devices(spec: RunSpec, rundir: RunDir, ctx: RunContext) -> dict:
    """A run on `recipe.devices` ranks, processes of its own (`mixkd.ranks`), while this one keeps its claim;
    or, where its ranks are a job's tasks (`ctx.tasks`), with this process as rank 0. Rank 0 writes the run's
    directory as the run trained here alone would; a rank's failure, which ends them all, is recorded here.
    Its teacher is made ready first (trained here if no runner does), so the ranks only load it."""
    check_devices(spec.run.recipe, ctx.device, spread=ctx.tasks is not None)
    started, clock = now(), time.perf_counter()
    try:
        ctx.teacher(spec)
        args = (ctx.job, spec.run_id)
        (summary,) = launch(_rank, args, devices(spec)) if ctx.tasks is None else ctx.tasks.lead(_rank, args)
        return summary
    except TeacherNotReady as e:
        return skipped(spec, str(e))
    except RankFailed as e:
        result = {"status": "failed", "error": e.line, "traceback": e.trace}
    except STOPS_THE_STUDY:
        raise
    except Exception as e:  # noqa: BLE001 - the teacher could not be loaded: recorded like any run's failure
        result = failure(e)
    summary = {"run_id": spec.run_id, **result, **ctx.env, "started_at": started, "finished_at": now(),
               "wall_seconds": time.perf_counter() - clock}
    rundir.write_summary(summary)
    return summary


def run_as_task(tasks: Tasks, job: Job, run_id: str) -> list[dict] | None:
    """One rank of a run across devices whose ranks are the tasks of one cluster job (`ranks.Tasks`): rank 0
    claims the run as `execute_group` does any run, and returns its summary; the others return None."""
    if not tasks.ranks.lead:
        return tasks.follow(_rank, (job, run_id))
    ctx = RunContext(job, tasks=tasks)
    try:
        return execute_group([ctx.specs[run_id]], ctx)
    finally:  # unless told to train (`Tasks.lead`), as when another runner holds the run, the others end
        tasks.tell(False)


def _rank(ranks: Ranks, join: Callable[[torch.device], None], job: Job, run_id: str) -> list[dict] | None:
    """One rank of a run across devices (the target of `launch`, or of `Tasks`): rank 0 trains, analyses and
    records it as `_run_group` does any run, and returns its summary; the others train alone, writing
    nothing."""
    ctx = RunContext(job, ranks)
    join(ctx.device)
    spec, rundir = ctx.specs[run_id], RunDir(ctx.out, run_id)
    if ranks.lead:
        return _run_group([(spec, rundir)], ctx)
    teacher = ctx.teacher(spec)
    ctx.engine.claim_threads()
    (member,) = train_group([spec.run], [CheckpointReader(rundir)], ctx.data, ctx.engine, teacher, ranks=ranks)
    if member.error is not None:  # its model could not be built
        raise member.error
    return None


class CheckpointReader:
    """The journal of a rank other than 0: the checkpoint to resume from, read; rank 0 writes the rest."""

    def __init__(self, rundir: RunDir):
        self.rundir = rundir

    def resume_state(self, device: str) -> dict | None:
        return self.rundir.training_state()
