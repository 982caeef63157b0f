"""`mixkd run --dry-run --estimate`: what a study's runs to train will cost on a device, before any starts.

Why: a grid of thousands of runs is days of compute, and what a run costs depends on the device, the engine
and the method, so it is timed where the study will run rather than read from a table measured elsewhere.
(The committed bench tables, results/bench, time KD students of three CIFAR-100 pairs on one 2-core CPU: no
teachers, mixes or other methods, so they cannot price a study.)

Each distinct (teacher, student, batch, mix, loss) of the runs to train (`progress.Key`) takes a few training
steps alone, through the engine's own loop (`bench.engine.engine_throughput`), on random images of the
dataset's shape and number, on the chosen device with the study's engine settings; the parts of a step that a
lockstep group shares (drawing and mixing the batch, the teacher's forward), an evaluation pass and the
analyses are timed beside. The study's time is then summed over the lockstep groups the runner would form.
"""

from __future__ import annotations

import dataclasses
import heapq
import inspect
import itertools
import math
import os
import platform
import time
from collections import defaultdict, deque
from dataclasses import dataclass

import pandas as pd
import torch

from .analysis import ANALYSES, analyse_run
from .bench.engine import engine_throughput
from .build import build_model, frozen_teacher, placed_model
from .config import RunConfig, RunSpec
from .data import InMemoryDataset, declared_eval_images, declared_shape
from .engine import DeviceEngine, lockstep_groups, resolve_device, synchronize
from .errors import MixkdError
from .metrics import predict
from .mixing import Mixer
from .progress import Key, Logged, duration, key_of, read_progress
from .study import Study
from .study_checks import training_images
from .train import mixing_rng
from .work import describe, todo_statuses

WARMUP, STEPS = 2, 5  # untimed steps (allocations, cuDNN's choice of kernels), then timed ones ...
LEAST, MOST = 0.25, 500  # ... as many as take a quarter of a second, at most 500
ANALYSED = 64  # evaluation images the analyses are timed on; scaled to those they read


@dataclass(frozen=True)
class Timing:
    """Seconds a run of one key spends, measured alone."""

    step: float  # one training step, all of it
    batch: float  # of which drawing and mixing the batch, which a lockstep group shares
    forward: float  # and the teacher's forward, which the group shares too (0 without a teacher)
    eval: float  # one pass over the evaluation set (every epoch)

    @property
    def own(self) -> float:
        """The part of a step no other run of its group shares."""
        return max(self.step - self.batch - self.forward, 0.0)


@dataclass(frozen=True)
class Row:
    """A key's runs to train and what they cost."""

    key: Key
    runs: int
    run_epochs: int  # epochs its runs have left, summed
    steps: int  # training steps per epoch
    step: float  # seconds per step, timed alone
    shared: float  # a run's share of its lockstep group's step (mean over run-epochs)
    eval: float
    analysis: float  # mean per run

    @property
    def total(self) -> float:
        return self.run_epochs * (self.steps * self.shared + self.eval) + self.runs * self.analysis


def random_data(study: Study, eval_size: int) -> InMemoryDataset:
    """Random images of the study's dataset shape, as many to train on as it holds (a method with a memory
    of every image, CRD's, costs by their number), `eval_size` to evaluate on; without the dataset's own
    crops and flips (its factory does not declare them); every class there."""
    spec = study.dataset.as_dict()
    classes, channels, size = declared_shape(spec)
    train = training_images(spec, "dataset")
    if train is None:
        raise MixkdError(f"--estimate: dataset {spec['name']} does not declare how many images it trains on")
    g = torch.Generator().manual_seed(0)

    def images(n: int):
        return (torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
                torch.arange(n) % classes)

    return InMemoryDataset(f"random {spec['name']}", *images(train), *images(eval_size), num_classes=classes,
                           mean=(0.5,) * channels, std=(0.25,) * channels)


def _seconds(fn, warmup: int, calls: int, device: torch.device, least: float | None = None) -> float:
    """Seconds per call of `fn` after `warmup` untimed calls: `calls` at a time until `least` seconds
    (default `LEAST`) passed: a few milliseconds' steps would measure the machine's noise."""
    least = LEAST if least is None else least
    for _ in range(warmup):
        fn()
    synchronize(device)
    clock, done = time.perf_counter(), 0
    while True:
        for _ in range(calls):
            fn()
        done += calls
        synchronize(device)
        if time.perf_counter() - clock >= least or done >= MOST:
            return (time.perf_counter() - clock) / done


def batch_seconds(run: RunConfig, data, engine: DeviceEngine) -> float:
    """Drawing a training batch (with the recipe's augmentation) and mixing it, as a lockstep group does once
    for its runs (`train.Lockstep.of`)."""
    r = run.recipe
    extra = r.loader_options()
    batches = itertools.chain.from_iterable(itertools.repeat(data.train_loader(r.batch_size, engine.device,
                                                                                run.seed, **extra)))
    mixer, rng = Mixer.of(run.mix), mixing_rng(run.seed)

    def draw():
        x, y, _ = next(batches)
        mixer(engine.layout(x), y, rng)

    return _seconds(draw, WARMUP, STEPS, engine.device)


def forward_seconds(teacher: torch.nn.Module, data, batch: int, engine: DeviceEngine) -> float:
    """One teacher forward of a training batch, as a lockstep group makes it (no gradients)."""
    x = engine.layout(torch.randn(batch, data.in_chans, data.img_size, data.img_size, device=engine.device))

    def forward():
        with torch.no_grad(), engine.autocast():
            teacher(x)

    return _seconds(forward, WARMUP, STEPS, engine.device)


def measure(spec: RunSpec, teacher: torch.nn.Module | None, data: InMemoryDataset, engine: DeviceEngine,
            eval_images: int) -> Timing:
    """A run's step and evaluation, on random weights (what a step costs does not depend on them)."""
    run, device = spec.run, engine.device
    step = batch = forward = 0.0
    if not run.imported:
        try:
            measured = engine_throughput(teacher, [run], data, engine, STEPS, WARMUP)
            if measured["seconds"] < LEAST:  # again, as many steps as take `LEAST`
                steps = min(math.ceil(STEPS * LEAST / max(measured["seconds"], 1e-9)), MOST)
                measured = engine_throughput(teacher, [run], data, engine, steps, WARMUP)
        except Exception as e:  # noqa: BLE001 - the run would fail the same way: say which, in one line
            raise MixkdError(f"--estimate: a training step of {describe(spec)} failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None
        step = measured["seconds"] / measured["steps"]
        batch = batch_seconds(run, data, engine)
        if teacher is not None:
            forward = forward_seconds(teacher, data, run.recipe.batch_size, engine)
    model, loader = placed_model(run, data, engine), data.eval_loader(run.eval_batch_size, device)
    per_image = _seconds(lambda: predict(model, loader), 1, 1, device) / len(data.eval_y)
    return Timing(step, batch, forward, per_image * eval_images)


def robustness_images() -> int:
    """How many evaluation images the robustness analysis attacks at most (its `samples`)."""
    return inspect.signature(ANALYSES.get("robustness")).parameters["samples"].default


def analysis_seconds(run: RunConfig, teacher: torch.nn.Module | None, data: InMemoryDataset,
                     engine: DeviceEngine, eval_images: int, eval_seconds: float, warmup: int) -> float:
    """A run's analyses: a pass over the evaluation set, attacks on its first images and a few more on the
    outputs; timed on `ANALYSED` images, scaled to those the attacks read, plus the pass over the rest."""
    small = min(ANALYSED, len(data.eval_y))
    few = dataclasses.replace(data, eval_x=data.eval_x[:small], eval_y=data.eval_y[:small])
    model, device = placed_model(run, data, engine), engine.device
    seconds = _seconds(lambda: analyse_run(run, model, teacher, few, device), warmup, 1, device, least=0)
    attacked = min(eval_images, robustness_images())
    return seconds * attacked / small + eval_seconds * (eval_images - attacked) / eval_images


def timings(todo: list[RunSpec], keys: dict[str, Key], study: Study,
            engine: DeviceEngine) -> tuple[dict[Key, Timing], dict[str, float]]:
    """Each key's timing, measured on its first run to train; and each run's analyses, timed once per
    (teacher, architecture, role, seed): what analyses a run gets may depend on those (t-SNE: seed 0's)."""
    eval_images = declared_eval_images(study.dataset.as_dict())
    if eval_images is None:
        raise MixkdError(f"--estimate: dataset {study.dataset.name} does not declare how many images it "
                         f"evaluates on")
    data = random_data(study, min(eval_images, max(s.run.eval_batch_size for s in todo)))
    specs = {s.run_id: s for s in study.runs}
    measured: dict[Key, Timing] = {}
    analysed: dict[tuple, float] = {}
    analyses: dict[str, float] = {}
    teachers: dict[str, torch.nn.Module] = {}  # by architecture: random weights serve every teacher of one

    def teacher_of(run: RunConfig, key: Key) -> torch.nn.Module | None:
        if run.teacher and key.teacher not in teachers:
            teachers[key.teacher] = frozen_teacher(build_model(specs[run.teacher].run, data), engine)
        return teachers.get(key.teacher)

    for spec in todo:
        key, run = keys[spec.run_id], spec.run
        teacher = teacher_of(run, key)
        if key not in measured:
            measured[key] = measure(spec, teacher, data, engine, eval_images)
            said = "imported: no training step" if run.imported else f"{measured[key].step:.4g} s/step"
            print(f"  timed {describe(spec)}: {said}", flush=True)
        which = (key.teacher, key.student, run.role, run.seed, run.eval_batch_size)
        if which not in analysed:  # the first warmed up: imports, t-SNE's first call
            analysed[which] = analysis_seconds(run, teacher, data, engine, eval_images, measured[key].eval,
                                               warmup=int(not analysed))
        analyses[spec.run_id] = analysed[which]
    return measured, analyses


def cost_rows(todo: list[RunSpec], keys: dict[str, Key], measured: dict[Key, Timing],
              analyses: dict[str, float], left: dict[str, int], lockstep: int,
              train_images: int) -> tuple[list[Row], list[list[RunSpec]], list[float]]:
    """Per key its runs' cost; and the lockstep groups the runner would form of `todo`, with each group's
    seconds (its runs step together, then evaluate and are analysed one after another: their sum).

    A group's step: one batch drawn and mixed, one teacher forward per input the teacher sees (clean, mixed),
    and each run's own part; the shared parts are split evenly among its runs."""
    groups = lockstep_groups(todo, lockstep)
    per_run: dict[str, tuple[float, float]] = {}  # run → (seconds per step in its group, total seconds)
    group_seconds = []
    for group in groups:
        lead = measured[keys[group[0].run_id]]
        forwards = len({s.run.view.teacher_mixed for s in group}) if group[0].run.teacher else 0
        shared = (lead.batch + forwards * lead.forward) / len(group)
        for spec in group:
            rid, key = spec.run_id, keys[spec.run_id]
            t, steps = measured[key], steps_per_epoch(train_images, key)
            per_run[rid] = (t.own + shared, left[rid] * (steps * (t.own + shared) + t.eval) + analyses[rid])
        group_seconds.append(sum(per_run[s.run_id][1] for s in group))
    by_key: dict[Key, list[RunSpec]] = defaultdict(list)
    for spec in todo:
        by_key[keys[spec.run_id]].append(spec)
    rows = []
    for key, specs in by_key.items():
        epochs, t = sum(left[s.run_id] for s in specs), measured[key]
        shared = sum(left[s.run_id] * per_run[s.run_id][0] for s in specs) / epochs if epochs else t.step
        rows.append(Row(key, len(specs), epochs, steps_per_epoch(train_images, key), t.step, shared, t.eval,
                        sum(analyses[s.run_id] for s in specs) / len(specs)))
    return rows, groups, group_seconds


def steps_per_epoch(train_images: int, key: Key) -> int:
    return math.ceil(train_images / key.batch) if key.batch else 0  # the loader keeps a short last batch


def wall_seconds(groups: list[list[RunSpec]], seconds: list[float], workers: int) -> float:
    """The local executor's wall time with `workers` processes: groups whose teacher is trained elsewhere (or
    already) start at once, in order; a teacher's student groups join the queue when it finishes; each worker
    takes the next. Workers are taken to run as fast side by side as alone (a core, a GPU each)."""
    ids = {s.run_id for g in groups for s in g}
    waiting: dict[str, list[int]] = defaultdict(list)
    queue: deque[int] = deque()
    for i, group in enumerate(groups):
        teacher = group[0].run.teacher
        (waiting[teacher] if teacher in ids else queue).append(i)
    clock, running = 0.0, []
    while queue or running:
        while queue and len(running) < workers:
            i = queue.popleft()
            heapq.heappush(running, (clock + seconds[i], i))
        clock, i = heapq.heappop(running)
        for spec in groups[i]:
            queue.extend(waiting.pop(spec.run_id, []))
    return clock


def device_name(engine: DeviceEngine) -> str:
    """`cuda (NVIDIA H200)`, `cpu (x86_64, 1 thread per run)`."""
    device = engine.device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = engine.cpu_threads
    name = platform.processor() or platform.machine()
    return f"cpu ({name}, {threads} thread{'s' * (threads > 1)} per run)"


def crowded(engine: DeviceEngine, workers: int) -> str:
    """Why `workers` would not each run as fast as one alone here: more of them than GPUs, or than cores for
    their threads."""
    if engine.device.type == "cuda":
        gpus = torch.cuda.device_count()
        return f" (they are not: {workers} share {gpus} GPU{'s' * (gpus > 1)})" if workers > gpus else ""
    cores, threads = os.cpu_count() or 1, workers * engine.cpu_threads
    return f" (they are not: {threads} threads on {cores} cores)" if threads > cores else ""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def number(x: float) -> str:
    """Four significant digits, without an exponent above 10⁴."""
    return f"{x:.4g}" if x < 1e4 else f"{x:.0f}"


def format_rows(rows: list[Row]) -> str:
    return pd.DataFrame([{"teacher": r.key.teacher, "student": r.key.student, "batch": r.key.batch or "-",
                          "mix": r.key.mix, "loss": r.key.loss, "runs": r.runs, "s/step": number(r.step),
                          "grouped": number(r.shared), "run-epochs": r.run_epochs, "steps/epoch": r.steps,
                          "eval": number(r.eval), "analyses": number(r.analysis), "total": number(r.total)}
                         for r in rows]).to_string(index=False)


COLUMNS = ("s/step: a training step timed alone; grouped: a run's share of its lockstep group's step; "
           "eval: one evaluation; analyses: per run; total = run-epochs × (steps/epoch × grouped + eval) + "
           "runs × analyses; in seconds")
APPROXIMATIONS = ("a lockstep group's step is its runs' steps timed alone less what they share, plus one "
                  "batch drawn and mixed and one teacher forward per input the teacher sees (clean, mixed), "
                  "split evenly among them; one evaluation per run and epoch; analyses timed on a few "
                  "images, scaled; a method's pre-training epochs at the cost of its training steps; random "
                  "weights and images, without the dataset's own crops and flips; model building, "
                  "checkpoints, compilation and fusion not counted")


def estimate(study: Study, todo: list[RunSpec], logged: Logged, engine: DeviceEngine,
             workers: int = 1) -> None:
    """Time `todo`'s keys on `engine`'s device and print the study's cost there."""
    specs = {s.run_id: s for s in study.runs}
    keys = {s.run_id: key_of(s, specs) for s in todo}
    left = {s.run_id: logged.runs[s.run_id].epochs - logged.runs[s.run_id].done for s in todo}
    where, kinds = device_name(engine), plural(len(set(keys.values())), "kind")
    print(f"estimate: timing each of the {kinds} of run to train (teacher, student, batch, mix, loss) on "
          f"{where}: {WARMUP} steps, then {STEPS} or more (≥ {LEAST} s), on random images of the shape of "
          f"{study.dataset.name}", flush=True)
    threads = torch.get_num_threads()
    engine.claim_threads()
    try:
        measured, analyses = timings(todo, keys, study, engine)
    finally:
        torch.set_num_threads(threads)
    train = training_images(study.dataset.as_dict(), "dataset")
    rows, groups, seconds = cost_rows(todo, keys, measured, analyses, left, engine.lockstep, train)
    total = sum(r.total for r in rows)
    print(format_rows(rows))
    print(f"columns: {COLUMNS}")
    wall = f"; --workers {workers}: ≈ {duration(wall_seconds(groups, seconds, workers))} wall, if each " \
        f"worker runs as fast as one alone{crowded(engine, workers)}" if workers > 1 else ""
    print(f"total: {number(total)} s{f' ≈ {duration(total)}' if total >= 120 else ''} on {where} for one "
          f"runner: {plural(len(todo), 'run')} in {plural(len(groups), 'lockstep group')}, "
          f"{plural(sum(left.values()), 'run-epoch')}{wall}")
    print(f"approximations: {APPROXIMATIONS}")


def dry_run(study: Study, out, only: frozenset[str] | None, device: str, retry_failed: bool, workers: int,
            timed: bool) -> None:
    """What `--dry-run` prints after its table: with `--estimate` the study's (or slice's) time on `device`,
    else one line saying what that would time."""
    logged = read_progress(study, out)
    todo = [s for s in study.runs if logged.runs[s.run_id].status in todo_statuses(retry_failed)
            and (only is None or s.run_id in only)]
    if not todo:
        return
    engine = study.file.engine.resolve(resolve_device(device))
    if timed:
        return estimate(study, todo, logged, engine, workers)
    specs = {s.run_id: s for s in study.runs}
    kinds = plural(len({key_of(s, specs) for s in todo}), "kind")
    print(f"time: not estimated; --estimate times a few steps of each of the {kinds} of run to train "
          f"(teacher, student, batch, mix, loss) on {device_name(engine)}")
