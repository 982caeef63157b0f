"""The Slurm executor: each lockstep group one task of a job array, submitted through submitit.

A run across N devices (`recipe.devices`) is a job of its own array with a task per rank, each task one GPU
and the CPUs of one run, --gpus-per-node of them on each node (unset: all N on one), so a run can span nodes.
The tasks meet where submitit says (`TorchDistributedEnvironment`); rank 0's task claims the run and records
it, as the local executor's launcher does (`mixkd.ranks.Tasks`), and srun ends every task once one fails.

Teachers (and runs that need none) go in a first array; their students in a second that Slurm starts once the
first has ended (`afterany`: a student whose teacher failed is skipped and stays to do, as everywhere). Every
job writes to the study folder itself, which must be on a filesystem the nodes share. A job that Slurm
preempts or times out is requeued by submitit (`GroupJob.checkpoint`): its runs resume from the checkpoint
each wrote at its last epoch. The jobs' ids are kept in `<out>/slurm/jobs.jsonl`, so `mixkd ls` shows the
job of each run still to do, and running the study again submits nothing that is still queued.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import MixkdError
from ..provenance import now
from ..ranks import Ranks, Tasks
from ..work import Job, RunContext, devices, run_as_task
from .base import EXECUTORS, ExecutorOptions, Group, SlurmOptions, run_in_worker, teacher_of

JOBS = "jobs.jsonl"
# states of a job that will still train its runs (Slurm's names; a local job is RUNNING while its process is)
LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
        "REQUEUE_HOLD", "REQUEUE_FED"}
REQUEUES = 10  # timeouts a group's job may be requeued after (submitit's default, 3, is short for 240 epochs)
TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def minutes(text: str) -> int:
    """Slurm's time formats (MM, HH:MM, HH:MM:SS, D-HH[:MM[:SS]]) in whole minutes, rounded up."""
    match = TIME.match(text.strip())
    if not match:
        raise MixkdError(f"--time {text}: expected HH:MM, minutes, or D-HH:MM (Slurm's formats)")
    days, first, second, third = match.groups()
    if days is None and second is None:  # MM
        total = int(first) * 60
    else:  # HH:MM[:SS], or D-HH[:MM[:SS]]
        total = ((int(days or 0) * 24 + int(first)) * 60 + int(second or 0)) * 60 + int(third or 0)
    if total <= 0:
        raise MixkdError(f"--time {text}: must be longer than zero")
    return math.ceil(total / 60)


@dataclass
class GroupJob:
    """A lockstep group as a submitit job. On preemption or timeout submitit calls `checkpoint` and requeues
    what it returns: the same group, whose runs resume from their checkpoints (every rank of a run across
    devices from the same one). An input error comes back as its one line (submitit would return only a
    traceback's text). In a job of a run's ranks, each task runs one, and only rank 0's answers; another
    rank's error ends its task, so that srun ends the job."""

    job: Job
    group: Group

    def __call__(self) -> dict | None:
        tasks = _tasks() if devices(self.group[0]) > 1 else None
        if tasks is not None and not tasks.ranks.lead:
            return run_as_task(tasks, self.job, self.group[0].run_id)
        try:
            if tasks is not None:
                return {"summaries": run_as_task(tasks, self.job, self.group[0].run_id)}
            return {"summaries": run_in_worker(self.job, self.group)}
        except MixkdError as e:
            return {"error": str(e)}

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _tasks() -> Tasks:
    """This task's rank in its job, and where the job's tasks meet, as submitit exports them to torch (rank 0's
    node, a port drawn from the job's id)."""
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    return Tasks(Ranks(env.rank, env.world_size, env.local_rank), env.master_addr, env.master_port)


@EXECUTORS.register("slurm")
def slurm(todo: list[Group], ctx: RunContext, options: ExecutorOptions) -> Iterator[dict]:
    """One job array per wave of groups (teachers, then students), through submitit; waits for the jobs and
    yields their runs' summaries. Ctrl-C stops the waiting, not the jobs."""
    if options.workers != 1 or options.address:
        raise MixkdError("--workers and --address are for the local and Ray executors; on Slurm each lockstep "
                         "group is a job, and --array-parallelism caps how many run at once")
    opts = options.slurm
    if opts.time is None:
        raise MixkdError("--executor slurm needs --time HH:MM: each job's limit (a job that reaches it is requeued "
                         "and its runs resume from their checkpoints)")
    executor, gpus = _executor(opts, ctx)
    cpus = math.ceil(ctx.study.file.resources.cpus_per_run)
    return _submitted(executor, todo, ctx.job, opts.cluster, _asks(todo, gpus, cpus, opts))


def _asks(todo: list[Group], gpus: int, cpus: int, opts: SlurmOptions) -> dict[int, dict]:
    """What a job asks for, by its runs' devices: a GPU (if the runs use GPUs: `gpus` > 0) and `cpus` for a
    group of runs on one device each (it trains on one); for a run across N, a task per rank with a GPU and
    `cpus`, --gpus-per-node tasks to a node (unset: all on one), and srun told to end every task once one
    fails rather than leave the others waiting in a collective. Raises, before anything is submitted, where N
    does not fill whole nodes."""
    asks = {}
    for n in sorted({devices(g[0]) for g in todo}):
        per_node = min(n, opts.gpus_per_node or n)
        if n % per_node:
            raise MixkdError(f"recipe.devices: {n} devices do not fill whole nodes of --gpus-per-node "
                             f"{opts.gpus_per_node}: give such runs a multiple of {per_node} devices, or at "
                             f"most {per_node}")
        if opts.cluster == "local" and n > per_node:
            raise MixkdError(f"recipe.devices: {n} devices at --gpus-per-node {opts.gpus_per_node} span "
                             f"{n // per_node} nodes, and --cluster local has one: leave --gpus-per-node out")
        one = dict(nodes=1, tasks_per_node=1, gpus_per_node=min(gpus, 1), slurm_srun_args=None)
        asks[n] = one if n == 1 else dict(nodes=n // per_node, tasks_per_node=per_node,
                                          gpus_per_node=per_node if gpus else 0,
                                          slurm_srun_args=["--kill-on-bad-exit=1"])
        asks[n]["cpus_per_task"] = cpus
    return asks


def _executor(opts: SlurmOptions, ctx: RunContext):
    try:
        import submitit
    except ImportError:
        raise MixkdError("--executor slurm needs submitit: pip install 'mixkd[slurm]'") from None
    if opts.cluster == "slurm" and shutil.which("sbatch") is None:
        raise MixkdError("--executor slurm: no Slurm here (sbatch is not on the PATH); --cluster local runs the "
                         "jobs as processes on this machine through submitit")
    resources, device = ctx.study.file.resources, ctx.job.device
    gpus = opts.gpus_per_node if opts.gpus_per_node is not None else (0 if device == "cpu" else 1)
    executor = submitit.AutoExecutor(folder=ctx.out / "slurm" / "%j", cluster=opts.cluster,
                                     slurm_max_num_timeout=REQUEUES, local_max_num_timeout=REQUEUES)
    executor.update_parameters(
        name=f"mixkd-{ctx.study.name}", timeout_min=minutes(opts.time), gpus_per_node=gpus,
        cpus_per_task=math.ceil(resources.cpus_per_run), slurm_partition=opts.partition,
        slurm_array_parallelism=opts.array_parallelism,
        slurm_additional_parameters=dict(opts.extra) or None)
    return executor, gpus


def _submitted(executor, todo: list[Group], job: Job, cluster: str, asks: dict[int, dict]) -> Iterator[dict]:
    log = JobLog(job.out, cluster)
    queued = log.live()
    groups = [kept for group in todo if (kept := [s for s in group if s.run_id not in queued])]
    if len(groups) < len(todo) or sum(map(len, groups)) < sum(map(len, todo)):
        held = sorted({queued[s.run_id] for g in todo for s in g if s.run_id in queued})
        print(f"{sum(map(len, todo)) - sum(map(len, groups))} runs are in jobs still queued or running "
              f"({', '.join(held[:5])}{' ...' if len(held) > 5 else ''}): not submitted again", flush=True)
    ids = {s.run_id for g in groups for s in g}
    waves = [[g for g in groups if teacher_of(g) not in ids], [g for g in groups if teacher_of(g) in ids]]
    jobs: list = []
    try:
        for wave in filter(None, waves):
            if jobs and cluster != "slurm":  # no dependencies off Slurm: the teachers' jobs end first
                yield from _results(jobs)
                jobs = []
            after = [j.job_id for j in jobs]
            for n in sorted({devices(g[0]) for g in wave}):  # an array per size: its jobs ask alike
                executor.update_parameters(**asks[n])
                jobs += _submit(executor, [g for g in wave if devices(g[0]) == n], job, log, after)
        yield from _results(jobs)
        template = job.out / "slurm" / "%j"  # submitit's folder template, made a folder of its own: empty
        if template.is_dir() and not any(template.iterdir()):
            template.rmdir()
    except (KeyboardInterrupt, GeneratorExit):
        if jobs:
            print(f"\nmixkd: stopped waiting; the jobs go on ({_job_list(jobs)}): `mixkd ls` shows them, "
                  f"`mixkd report` writes the tables once they end", file=sys.stderr, flush=True)
        raise


def _submit(executor, wave: list[Group], job: Job, log: "JobLog", after: list[str]) -> list:
    arrays = sorted({j.split("_")[0] for j in after})
    executor.update_parameters(slurm_dependency=f"afterany:{':'.join(arrays)}" if arrays else None)
    with executor.batch():
        jobs = [executor.submit(GroupJob(job, group)) for group in wave]
    log.add([(spec.run_id, j.job_id) for j, group in zip(jobs, wave) for spec in group])
    print(f"submitted {len(jobs)} jobs ({sum(map(len, wave))} runs): {_job_list(jobs)}"
          f"{f', after {_job_list(arrays)}' if arrays else ''}", flush=True)
    return jobs


def _job_list(jobs: list) -> str:
    names = [getattr(j, "job_id", j) for j in jobs]
    arrays = sorted({n.split("_")[0] for n in names})
    return f"array {', '.join(arrays)}" if len(arrays) < len(names) else ", ".join(names)


def _results(jobs: list) -> Iterator[dict]:
    """Summaries of each job's runs as it ends (of a run's ranks, rank 0's task has them). A job that ended
    without them (killed, out of memory, out of requeues) is said, with its log; its runs stay to do, and
    running the study again resumes them."""
    from submitit.helpers import as_completed

    for done in as_completed(jobs, poll_frequency=1 if jobs and _is_local(jobs[0]) else 15):
        lead = done.task(0)  # the job itself where it has one task
        try:
            out = lead.result()
        except Exception as e:  # submitit's FailedJobError / UncompletedJobError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"job {done.job_id} ended without finishing its runs ({reason}); they stay to do: run the "
                          f"study again to resume them (log: {lead.paths.stderr})", stacklevel=2)
            continue
        if "error" in out:
            raise MixkdError(out["error"])
        yield from out["summaries"]


def _is_local(job) -> bool:
    return type(job).__name__ == "LocalJob"


class JobLog:
    """`<out>/slurm/jobs.jsonl`: the job each run was last submitted in, one line per run and submission."""

    def __init__(self, out: Path, cluster: str = "slurm"):
        self.path, self.cluster = Path(out) / "slurm" / JOBS, cluster

    def add(self, pairs: list[tuple[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.writelines(json.dumps({"run_id": r, "job_id": j, "cluster": self.cluster,
                                                  "submitted_at": now()}) + "\n" for r, j in pairs)

    def latest(self) -> dict[str, tuple[str, str]]:
        """run id → (job id, cluster) of the job it was last submitted in (a line cut by a kill is skipped)."""
        if not self.path.is_file():
            return {}
        jobs = {}
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
                jobs[record["run_id"]] = (record["job_id"], record["cluster"])
            except (ValueError, KeyError, TypeError):
                continue
        return jobs

    def states(self) -> dict[str, tuple[str, str]]:
        """run id → (job id, state) of its last job; the state "unknown" where Slurm cannot be asked."""
        jobs = self.latest()
        states = job_states(set(jobs.values()))
        return {run: (job, states.get((job, cluster), "unknown")) for run, (job, cluster) in jobs.items()}

    def live(self) -> dict[str, str]:
        """run id → job id, for runs whose last job is still queued or running."""
        return {run: job for run, (job, state) in self.states().items() if state in LIVE}


def job_states(jobs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Each (job id, cluster)'s state: Slurm's (one `sacct` call for them all), or for the local cluster's jobs
    (ids are process ids) RUNNING while the process lives, else ENDED."""
    states = {(j, c): ("RUNNING" if _alive(int(j)) else "ENDED") for j, c in jobs if c == "local"}
    slurm_ids = {j for j, c in jobs if c == "slurm"}
    if slurm_ids and shutil.which("sacct"):
        states.update({(j, "slurm"): state for j, state in _sacct(slurm_ids).items()})
    return states


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sacct(ids: set[str]) -> dict[str, str]:
    from submitit.slurm.slurm import SlurmInfoWatcher

    command = ["sacct", "-o", "JobID,State", "--parsable2", *(a for j in sorted({i.split("_")[0] for i in ids})
                                                               for a in ("-j", j))]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = SlurmInfoWatcher().read_info(output)
    return {j: info[j]["State"].split()[0] for j in ids if j in info}


def with_jobs(table, out: Path):
    """`table` (a runs overview with run_id and status) with each unfinished run's last job and its state,
    where the study was ever submitted to a cluster (`mixkd ls`); as it was otherwise."""
    states = JobLog(out).states()
    if not states:
        return table
    table = table.copy()
    todo = table["status"] != "complete"
    table["job"] = [states[r][0] if r in states and t else "" for r, t in zip(table["run_id"], todo)]
    table["job_state"] = [states[r][1] if r in states and t else "" for r, t in zip(table["run_id"], todo)]
    return table
