"""The local executor: one group after another in this process, or a pool of worker processes."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import active_children, get_context
from typing import Iterator

import torch

from ..errors import MixkdError
from ..work import Job, RunContext, execute_group
from .base import EXECUTORS, ExecutorOptions, Group, run_in_worker, teacher_of


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
