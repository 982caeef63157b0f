"""The Ray executor: one Ray task per lockstep group, on a local Ray instance or a running cluster."""

from __future__ import annotations

from typing import Iterator

from ..errors import MixkdError
from ..study import Resources
from ..work import Job, RunContext, devices
from .base import EXECUTORS, ExecutorOptions, Group, run_in_worker, teacher_of


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


def across_devices(cpus: float, gpus: float, n: int) -> dict:
    """What the task of a run across `n` devices asks: n whole GPUs where runs take GPUs, n × the CPUs. Its
    ranks are processes the task starts on its node (`mixkd.ranks`), on the GPUs Ray gives it."""
    return {"num_cpus": cpus * n, "num_gpus": float(n) if gpus > 0 else 0.0} if n > 1 else {}


def _submit(ray, todo: list[Group], job: Job) -> list:
    resources = job.study.file.resources
    gpus = gpus_per_task(resources, job.device, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(num_cpus=resources.cpus_per_run, num_gpus=gpus)(_ray_task)
    job_ref = ray.put(job)  # the study once in the object store, not once per task
    refs, by_run = [], {}
    for group in todo:  # teachers come first, so a student group's teacher task already exists
        teacher = by_run.get(teacher_of(group))
        asks = task.options(**across_devices(resources.cpus_per_run, gpus, devices(group[0])))
        refs.append(asks.remote(job_ref, group, *([teacher] if teacher else [])))
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
