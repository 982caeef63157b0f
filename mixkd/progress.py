"""Where a study stands, for `mixkd ls`: each run's epochs done, and how long its unfinished runs will take.

Read from what runs wrote, never from a model, so a 2,000-run study lists in seconds: a finished run's
summary, and the epoch log of a run without one (few: those in training, or cut short).

The ETA is the epochs left times the seconds a run-epoch took in this study so far. A lockstep group trains
its runs together and logs the group's epoch time for each of them, so a run's share is that time over the
group's size: the summary's `lockstep_size` for a finished run; for one in training, the number of runs whose
last logged epoch took the very same time (they stepped together). Epoch times count training steps only, so
evaluation, analyses and checkpoints are added as the ratio of finished groups' wall time to their training
time.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig, RunSpec
from .rundir import CHECKPOINT, EPOCHS, DamagedRun, RunDir, locks_held
from .study import Study


@dataclass(frozen=True)
class Key:
    """What a training step costs by: runs with equal keys take equal time per step."""

    teacher: str  # the teacher's architecture; "-" for a run without one
    student: str  # the run's own architecture
    batch: int | None  # None: an imported teacher, which trains nothing
    mix: str
    loss: str


def architecture(run: RunConfig) -> str:
    """A model as its cost depends on it: its name, with any arguments (a ViT's patch size, say)."""
    args = run.model_args.thaw()
    return run.model + (f"({','.join(f'{k}={v}' for k, v in sorted(args.items()))})" if args else "")


def key_of(spec: RunSpec, specs: dict[str, RunSpec]) -> Key:
    run = spec.run
    teacher = architecture(specs[run.teacher].run) if run.teacher else "-"
    return Key(teacher, architecture(run), run.recipe.batch_size if run.recipe else None, run.mix.name,
               run.loss.name)


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    status: str  # complete, failed, running (an epoch log without a summary) or pending
    done: int  # epochs logged
    epochs: int
    seconds: float | None = None  # its share of its group's training seconds per epoch; None: none logged

    @property
    def label(self) -> str:
        return f"{self.done}/{self.epochs}"

    @property
    def left(self) -> int:
        return self.epochs - self.done if self.status in ("pending", "running") else 0


@dataclass(frozen=True)
class Logged:
    """What a study's output folder says of its runs' progress and costs."""

    runs: dict[str, RunProgress]
    overhead: float | None  # finished groups' wall time over their training time; None: no group finished
    device: str | None  # where the runs logged (e.g. "cuda (NVIDIA H200)")


def _log(rundir: RunDir) -> list[dict]:
    try:
        return rundir.read_epochs()
    except DamagedRun:
        return []


def read_progress(study: Study, out: Path) -> Logged:
    """Every run's progress; epoch logs are read for runs that have no finished summary only."""
    summaries = {s.run_id: RunDir(out, s.run_id).read_summary() for s in study.runs}
    logs = {s.run_id: _log(RunDir(out, s.run_id)) for s in study.runs
            if (summaries[s.run_id] or {}).get("status") != "complete"}
    in_training = {rid: log for rid, log in logs.items() if log and summaries[rid] is None}
    together = Counter((log[-1]["epoch"], log[-1].get("seconds")) for log in in_training.values())
    runs = {}
    for spec in study.runs:
        rid, epochs, summary = spec.run_id, spec.run.epochs, summaries[spec.run_id]
        if summary is not None and summary["status"] == "complete":
            runs[rid] = RunProgress(rid, "complete", epochs, epochs, _finished_seconds(summary, epochs))
            continue
        log = logs[rid]
        status = summary["status"] if summary else (
            "running" if (RunDir(out, rid).path / EPOCHS).exists() else "pending")
        seconds = None
        if rid in in_training and all(isinstance(r.get("seconds"), (int, float)) for r in log):
            group = together[log[-1]["epoch"], log[-1]["seconds"]]
            seconds = sum(r["seconds"] for r in log) / len(log) / group
        runs[rid] = RunProgress(rid, status, len(log), epochs, seconds)
    finished = [s for s in summaries.values() if s is not None and s["status"] == "complete"]
    return Logged(runs, _overhead(finished), _device(finished, out, in_training))


def _finished_seconds(summary: dict, epochs: int) -> float | None:
    """A finished run's training seconds per epoch: its group's, over the group's size."""
    seconds, size = summary.get("train_seconds"), summary.get("lockstep_size")
    return seconds / epochs / size if epochs and seconds and size else None


def _overhead(finished: list[dict]) -> float | None:
    """Wall over training time of the groups that trained start to finish in one go. A group's runs share its
    start and (summed from the same epoch times) its training seconds; each run's wall time runs to the end
    of its own analyses, so the group's is their longest."""
    walls: dict[tuple, float] = defaultdict(float)
    for s in finished:
        if s.get("resumed_from_epoch") == 0 and s.get("train_seconds") and s.get("wall_seconds"):
            group = (s.get("started_at"), s["train_seconds"])
            walls[group] = max(walls[group], s["wall_seconds"])
    train = sum(seconds for _, seconds in walls)
    return sum(walls.values()) / train if train else None


def device_label(device: str, name: str | None) -> str:
    """`cpu (x86_64)`, `cuda (NVIDIA H200)`: the kind, and which one."""
    kind = str(device).split(":")[0]
    return f"{kind} ({name})" if name else kind


def _device(finished: list[dict], out: Path, in_training: dict[str, list]) -> str | None:
    """Where the finished runs trained (the commonest, where several), else where a run in training
    checkpoints from (its checkpoint says, without its tensors being read)."""
    devices = Counter(device_label(s["device"], s.get("device_name")) for s in finished if s.get("device"))
    if devices:
        return devices.most_common(1)[0][0]
    for rid in in_training:
        try:
            state = torch.load(RunDir(out, rid).path / CHECKPOINT, map_location="cpu", weights_only=True,
                               mmap=True)
        except Exception:  # noqa: BLE001 - none yet, or unreadable: the next one may say
            continue
        if isinstance(state, dict) and state.get("device"):
            return str(state["device"])
    return None


@dataclass(frozen=True)
class Eta:
    seconds: float
    epochs: int  # run-epochs left
    runs: int  # unfinished runs
    keyed: int  # of those, runs priced by runs of their own key
    median: float  # training seconds per run-epoch, over every run that logged some


def eta(runs: list[RunProgress], keys: dict[str, Key], logged: list[RunProgress],
        overhead: float | None) -> Eta | None:
    """The time `runs` need for one runner: per run, the epochs it has left × the median training seconds
    per run-epoch logged by runs of its key (`logged`: the study's runs), else by all of them; × `overhead`.
    None when nothing was logged yet."""
    seen = [p for p in logged if p.seconds is not None]
    if not seen:
        return None
    per_key: dict[Key, list[float]] = defaultdict(list)
    for p in seen:
        per_key[keys[p.run_id]].append(p.seconds)
    median = statistics.median(p.seconds for p in seen)
    left = [p for p in runs if p.left > 0]
    seconds = sum(p.left * statistics.median(per_key.get(keys[p.run_id], [median])) for p in left)
    keyed = sum(keys[p.run_id] in per_key for p in left)
    return Eta(seconds * (overhead or 1.0), sum(p.left for p in left), len(left), keyed, median)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.{int(seconds < 10)}f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def eta_line(study: Study, logged: Logged, only: frozenset[str] | None = None) -> str:
    """One line: the ETA of the study's (or the slice's) unfinished runs, and what it rests on."""
    specs = {s.run_id: s for s in study.runs}
    keys = {rid: key_of(spec, specs) for rid, spec in specs.items()}
    runs = [p for rid, p in logged.runs.items() if only is None or rid in only]
    failed = sum(p.status == "failed" for p in runs)
    note = f"; {failed} failed not counted (--retry-failed reruns them)" if failed else ""
    if not any(p.left for p in runs):
        return f"ETA: nothing left to train{note}"
    e = eta(runs, keys, list(logged.runs.values()), logged.overhead)
    if e is None:
        return (f"ETA: no estimate yet (no epoch logged); `mixkd run --dry-run --estimate` times a few "
                f"steps of each kind of run{note}")
    unseen = e.runs - e.keyed
    median = f" ({unseen} runs of kinds not logged yet: the median of all, {e.median:.3g} s)" * bool(unseen)
    extra = (f", ×{logged.overhead:.2f} for evaluation and analyses, as finished groups took"
             if logged.overhead else "; evaluation and analyses not counted yet (no group finished)")
    where = logged.device or "the device the runs logged"
    return (f"ETA ≈ {duration(e.seconds)} for one runner on {where}: {e.epochs} epochs left in {e.runs} "
            f"runs × the seconds per run-epoch their kind (teacher, student, batch, mix, loss) logged"
            f"{median}{extra}{note}")


def with_progress(table, logged: Logged, out: Path):
    """`table` (a runs overview with run_id and status) with a `progress` column after its status: epochs
    logged / epochs; a run not complete whose lock a process of this machine holds says `running`."""
    table = table.copy()
    locks = locks_held()
    running = [status != "complete" and RunDir(out, rid).held_here(locks)
               for rid, status in zip(table["run_id"], table["status"])]
    table.loc[running, "status"] = "running"
    table.insert(list(table.columns).index("status") + 1, "progress",
                 table["run_id"].map(lambda rid: logged.runs[rid].label))
    return table
