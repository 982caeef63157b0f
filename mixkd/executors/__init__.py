"""Executors: how a study's pending runs are spread over processes, a Ray cluster or a Slurm cluster.

Each takes the runs to do (teachers first) as lockstep groups, the study's RunContext and the options,
and yields every run's summary as it finishes. The unit of work is always `work.execute_group`, so
per-run locks, resuming from checkpoints and recording failures behave the same whichever executor runs it.
"""

from . import local, ray_tasks, slurm  # noqa: F401  (each registers its executor)
from .base import EXECUTORS, ExecutorOptions, SlurmOptions
from .local import take_a_gpu, visible_gpus
from .ray_tasks import gpus_per_task

__all__ = ["EXECUTORS", "ExecutorOptions", "SlurmOptions", "gpus_per_task", "take_a_gpu", "visible_gpus"]
