"""What every executor shares: the registry, its options, and the unit of work a worker process runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..config import RunSpec
from ..registry import Registry
from ..work import Job, RunContext, execute_group

Group = list[RunSpec]
Executor = Callable[[list[Group], RunContext, "ExecutorOptions"], Iterator[dict]]
EXECUTORS: Registry[Executor] = Registry("executor", inputs=("todo", "ctx", "options"))


@dataclass(frozen=True)
class SlurmOptions:
    """What each Slurm job of a study asks for (`mixkd run --executor slurm`); none of it enters a run id."""

    partition: str | None = None
    gpus_per_node: int | None = None  # a node's GPUs for a job; unset: 1 (a run across N: N), 0 on the CPU
    time: str | None = None  # the jobs' time limit, Slurm's [D-]HH:MM[:SS] or minutes
    array_parallelism: int | None = None  # most jobs of one array running at once (Slurm's %K)
    cluster: str = "slurm"  # local: submitit runs the jobs as processes here, to try a study's Slurm setup
    extra: tuple[tuple[str, str], ...] = ()  # further sbatch options, e.g. (("account", "lab"),)


@dataclass(frozen=True)
class ExecutorOptions:
    workers: int = 1  # local: worker processes
    address: str | None = None  # ray: the cluster to join ("auto": the one on this machine)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


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
