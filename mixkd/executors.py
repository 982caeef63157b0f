"""Executors: how a study's pending runs are spread over processes or a Ray cluster.

Each takes the runs to do (teachers first) as lockstep groups, the study's RunContext and the options,
and yields every run's summary as it finishes. The unit of work is always `work.execute_group`, so
per-run locks, resuming from checkpoints and recording failures behave the same whichever executor runs it.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import active_children, get_context
from typing import Callable, Iterator

import torch

from .config import RunSpec
from .errors import MixkdError
from .registry import Registry
from .study import Resources
from .work import Job, RunContext, execute_group

Group = list[RunSpec]
Executor = Callable[[list[Group], RunContext, "ExecutorOptions"], Iterator[dict]]
EXECUTORS: Registry[Executor] = Registry("executor", inputs=("todo", "ctx", "options"))


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int = 1  # local: worker processes
    address: str | None = None  # ray: the cluster to join ("auto": the one on this machine)


def teacher_of(group: Group) -> str | None:
    """The run every run of the group distils from (one: it is part of the lockstep key), or None."""
    return group[0].run.teacher


_contexts: dict[str, RunContext] = {}


def run_in_worker(job: Job, group: Group) -> list[dict]:
    """The unit of work in a worker process: the job's RunContext (dataset, teachers) is built once per process."""
    if job.key not in _contexts:
        _contexts.clear()  # a long-lived (Ray) worker moved on to another study: drop the last one's data
        _contexts[job.key] = RunContext(job)
    return execute_group(group, _contexts[job.key])


@EXECUTORS.register("local")
def local(todo: list[Group], ctx: RunContext, options: ExecutorOptions) -> Iterator[dict]:
    """One group at a time in this process, or `workers` processes that each start a group of students
    only after their teacher finished. On one GPU, several workers keep it busy with small runs."""
    if options.address:
        raise MixkdError("--address joins a Ray cluster; it needs --executor ray")
    if options.workers == 1:
        return (summary for group in todo for summary in execute_group(group, ctx))
    return _process_pool(todo, ctx.job, options.workers)


def _process_pool(todo: list[Group], job: Job, workers: int) -> Iterator[dict]:
    ids = {spec.run_id for group in todo for spec in group}
    waiting: dict[str, list[Group]] = defaultdict(list)  # teacher id → groups of its students in `todo`
    ready = []
    for group in todo:
        (waiting[teacher_of(group)] if teacher_of(group) in ids else ready).append(group)
    spawn = get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=take_a_gpu,
                               initargs=(spawn.Value("i", 0), visible_gpus()))
    running: dict = {}

    def submit(groups: list[Group]) -> None:
        with interrupts_ignored():  # workers start within submit()
            running.update({pool.submit(run_in_worker, job, group): group for group in groups})

    try:
        submit(ready)
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                group = running.pop(future)
                yield from future.result()
                for spec in group:
                    submit(waiting.pop(spec.run_id, []))
    finally:
        if running:  # stopped early (Ctrl-C, a full disk): end the workers' runs, which resume from checkpoints
            for worker in active_children():
                worker.terminate()
        pool.shutdown(cancel_futures=True)


@contextmanager
def interrupts_ignored():
    """Processes started in this block ignore Ctrl-C for good (Python keeps an inherited SIG_IGN), so only this
    process handles it and ends them. A worker interrupted itself, in the middle of an import say, would go on
    to its next run broken, and record that run failed."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (counting them starts no CUDA context)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def take_a_gpu(counter, gpus: list[str]) -> None:
    """Worker start-up: the next GPU in turn becomes this worker's cuda:0, so N workers spread over the GPUs."""
    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


@EXECUTORS.register("ray")
def ray_tasks(todo: list[Group], ctx: RunContext, options: ExecutorOptions) -> Iterator[dict]:
    """One Ray task per lockstep group, on a local Ray instance or, with --address, a running cluster; a
    student group's task takes its teacher's task result as an argument, so Ray starts it only once the
    teacher is done. Every task writes to the study directory itself: on a cluster it must be on a
    filesystem all nodes share."""
    if options.workers != 1:
        raise MixkdError("--workers is for --executor local; on Ray, the cluster's resources and the study's "
                         "`resources` decide how many runs train at once")
    try:
        import ray
    except ImportError:
        raise MixkdError("--executor ray needs Ray: pip install 'mixkd[ray]'") from None
    return _ray_summaries(ray, todo, ctx.job, options.address)


def _ray_summaries(ray, todo: list[Group], job: Job, address: str | None) -> Iterator[dict]:
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, address)
    try:
        pending = _submit(ray, todo, job)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from _result(ray, done[0])
    finally:
        if started_here:
            ray.shutdown()


def _init_ray(ray, address: str | None) -> None:
    try:
        ray.init(address=address)
    except ConnectionError as e:
        reason = str(e).split(". ")[0]
        raise MixkdError(f"--address {address}: no Ray cluster there ({reason}); start one with `ray start --head`, "
                         f"or leave out --address to start a local one") from None


def gpus_per_task(resources: Resources, device: str, cluster_gpus: float) -> float:
    """What a group task asks: the study's `gpus_per_run`, or when unset a whole GPU wherever the cluster has
    some and the runs may use them. Asking for none would not keep a task off the GPUs (Ray leaves
    CUDA_VISIBLE_DEVICES alone then): every task would train on cuda:0, as many at once as there are CPUs."""
    if resources.gpus_per_run is not None:
        return resources.gpus_per_run
    return 1.0 if device != "cpu" and cluster_gpus > 0 else 0.0


def _submit(ray, todo: list[Group], job: Job) -> list:
    resources = job.study.file.resources
    gpus = gpus_per_task(resources, job.device, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(num_cpus=resources.cpus_per_run, num_gpus=gpus)(_ray_task)
    job_ref = ray.put(job)  # the study once in the object store, not once per task
    refs, by_run = [], {}
    for group in todo:  # teachers come first, so a student group's teacher task already exists
        teacher = by_run.get(teacher_of(group))
        refs.append(task.remote(job_ref, group, *([teacher] if teacher else [])))
        by_run.update({spec.run_id: refs[-1] for spec in group})
    return refs


def _ray_task(job: Job, group: Group, *teacher_summaries: list[dict]) -> list[dict]:
    """`teacher_summaries` is unused: as an argument it makes Ray run this task after the teacher's."""
    return run_in_worker(job, group)


def _result(ray, ref) -> list[dict]:
    """A group's summaries; an input or environment error raised in a task is re-raised as the one line it is."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, MixkdError):
            raise e.cause from None
        raise
