"""One run across N devices, data-parallel: its ranks, the collectives the training loop calls, and `launch`,
which starts the ranks as `torchrun` would.

Every rank holds the whole model, trains on its shard of each global batch (`DeviceLoader`'s `shard`) and
forwards the teacher on it; gradients are averaged before each optimizer step, so the ranks' weights stay equal.
They are averaged by one all-reduce of every gradient the optimizer steps, rather than by wrapping the student
in DDP: that covers a distillation method's trainable parts (`Member.parts`) as well as the student, has no
unused-parameter or buffer-broadcast rules to get right for the zoo's models, and keeps the step of one rank
the step of a run alone. The price is DDP's overlap of communication with the backward pass.

A rank that fails ends its process; the launcher then ends the others, so no rank waits for ever in a
collective, and the first error raised is the run's.

On a cluster the ranks are instead the tasks of one job, started together on its nodes (`Tasks`): rank 0 then
stands in for the launcher.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from multiprocessing import connection, get_context
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .config import Recipe
from .errors import MixkdError

TRACEBACK_CHARS = 4000  # of a failed rank's traceback sent to the launcher: the pipe holds every rank's at once
# how long a job's other tasks wait for rank 0's word: it may first wait for the run's teacher, or train it
WORD_WAIT = timedelta(days=30)


class RankFailed(Exception):
    """A rank of a run across devices failed: its error (or how it died) in one line, and its traceback."""

    def __init__(self, line: str, trace: str = ""):
        super().__init__(line)
        self.line, self.trace = line, trace


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run across devices: rank `rank` of `world`, on cuda:`local` with CUDA (its
    place among the ranks on its machine)."""

    rank: int
    world: int
    local: int

    @property
    def lead(self) -> bool:
        """Rank 0: it evaluates, and writes the run's directory."""
        return self.rank == 0

    def join(self, device: torch.device, address: str, port: int, store: dist.Store | None = None) -> None:
        """Join the run's process group (NCCL on CUDA, gloo on the CPU), with torchrun's environment; rank 0
        listens at `address`:`port`, or has the ranks meet in `store` where they already share one."""
        os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world), LOCAL_RANK=str(self.local))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world, store=store)

    def average_gradients(self, params: list[Tensor], images: int) -> None:
        """Make each gradient the global batch's: the ranks' per-shard gradients weighted by their shares of the
        batch (`images` here, whatever each rank holds), in one all-reduce of one flat tensor."""
        grads = [p.grad for p in params if p.grad is not None]
        count = grads[0].new_full((1,), images)
        flat = torch.cat([*(g.reshape(-1) * images for g in grads), count])
        dist.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(summed.view_as(g))

    def sums(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each value summed over the ranks (one all-reduce)."""
        flat = torch.stack([v.float().reshape(()) for v in values.values()])
        dist.all_reduce(flat)
        return dict(zip(values, flat))

    def gathered(self, state) -> list:
        """Every rank's `state` (picklable), in rank order."""
        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def agreed(self, state: dict | None) -> dict | None:
        """The checkpoint this rank read, once sure rank 0 resumes from the same one (rank 0 alone may decide to
        start afresh, when its epoch log has gaps): None when rank 0 starts afresh."""
        epoch = [state["epoch"] if state is not None else None]
        dist.broadcast_object_list(epoch, src=0)
        if epoch[0] is None:
            return None
        if state is None or state["epoch"] != epoch[0]:
            raise MixkdError(f"rank {self.rank} read another checkpoint than rank 0 (epoch {epoch[0]})")
        return state


def check_devices(recipe: Recipe, device: torch.device, spread: bool = False) -> None:
    """Fail in one line, before any rank starts, when a run asks for more GPUs than this process sees (the CPU
    runs any number of ranks; ranks `spread` over a job's nodes see their own), or for SyncBatchNorm, which
    torch implements on CUDA alone."""
    if device.type == "cuda" and not spread and recipe.devices > torch.cuda.device_count():
        raise MixkdError(f"recipe.devices: a run asks for {recipe.devices} GPUs and this process sees "
                         f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES; with --workers each worker sees "
                         f"one): run it with --workers 1 on a machine with {recipe.devices}")
    if recipe.sync_bn and device.type != "cuda":
        raise MixkdError(f"recipe.sync_bn: SyncBatchNorm runs on CUDA only, and these runs train on "
                         f"{device.type}: leave it out, and each device's BatchNorm keeps its own statistics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(target: Callable, args: tuple, world: int):
    """Run `target(ranks, join, *args)` in `world` new processes and wait for them (`join(device)` joins the
    run's process group): what rank 0 returned (it must pickle), or RankFailed with the first error a rank
    raised, or how a rank died. Ranks still running then are ended, as are the ranks of a launcher killed
    itself."""
    spawn = get_context("spawn")
    outcomes, port = spawn.SimpleQueue(), free_port()
    ranks = [spawn.Process(target=_rank, args=(target, args, Ranks(r, world, r), port, os.getpid(), outcomes))
             for r in range(world)]
    for p in ranks:
        p.start()
    try:
        return _outcome(ranks, outcomes)
    finally:
        for p in ranks:
            p.kill()
            p.join()


def _outcome(ranks: list, outcomes):
    while True:
        connection.wait([p.sentinel for p in ranks if p.exitcode is None])
        if not outcomes.empty():  # put before its rank exits, so before any error it caused in another rank
            failed, value = outcomes.get()
            if failed:
                raise RankFailed(*value)
            return value
        for r, p in enumerate(ranks):
            if p.exitcode not in (None, 0) or (r == 0 and p.exitcode == 0):
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit status {p.exitcode}"
                raise RankFailed(f"rank {r} died ({how})")


def _rank(target: Callable, args: tuple, ranks: Ranks, port: int, launcher: int, outcomes) -> None:
    _die_with(launcher)
    try:
        value = target(ranks, partial(ranks.join, address="127.0.0.1", port=port), *args)
    except BaseException as e:  # noqa: BLE001 - the launcher records it as the run's error
        outcomes.put((True, (f"rank {ranks.rank}: {type(e).__name__}: {e}",
                             traceback.format_exc()[-TRACEBACK_CHARS:])))
        os._exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()
    if ranks.lead:
        outcomes.put((False, value))


def _die_with(launcher: int) -> None:
    """End this rank when its launcher dies (killed with -9, say): it holds the run's claim, and a runner that
    claims the run next must not find the old ranks still writing its directory."""

    def watch():
        while os.getppid() == launcher:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class Tasks:
    """The ranks of a run as the tasks of one cluster job, started together on its nodes (Slurm's, through
    submitit), this process being rank `ranks.rank`; they meet in a store rank 0 serves at `address`:`port`.

    Rank 0 stands in for `launch`: only once it holds the run and its teacher is ready does it tell the others
    to train (`lead`), or to end without (`tell`: another runner holds the run, or its teacher failed). A rank
    that fails leaves its error in the store before it exits, so rank 0, whose collective then breaks, records
    the first error raised as the run's, as `launch` does."""

    def __init__(self, ranks: Ranks, address: str, port: int):
        self.ranks, self.address, self.port, self.told = ranks, address, port, False
        self.store = dist.TCPStore(address, port, ranks.world, is_master=ranks.lead, timeout=WORD_WAIT,
                                   wait_for_workers=False)

    def join(self, device: torch.device) -> None:
        self.ranks.join(device, self.address, self.port, self.store)

    def tell(self, train: bool) -> None:
        """Rank 0: whether the other ranks train; said once, so what it says first stands, and heard by all
        before rank 0 goes on (the store they read it from ends with its process)."""
        if not self.told:
            self.told = True
            self.store.set("train", "yes" if train else "no")
            self.store.wait([f"heard {r}" for r in range(1, self.ranks.world)])

    def lead(self, target: Callable, args: tuple):
        """Rank 0: tell the others to train, and run `target(ranks, join, *args)` here as `launch` would have
        rank 0 run it: what it returns, or RankFailed with the first error a rank raised."""
        self.tell(True)
        try:
            return target(self.ranks, self.join, *args)
        except Exception as e:  # a preempted job's exit (SystemExit) is no failure: it passes
            if self.store.check(["failed"]):
                raise RankFailed(*json.loads(self.store.get("failed"))) from e
            trace = traceback.format_exc()[-TRACEBACK_CHARS:]
            raise RankFailed(f"rank 0: {type(e).__name__}: {e}", trace) from e
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    def follow(self, target: Callable, args: tuple) -> None:
        """A rank other than 0: `target(ranks, join, *args)` once rank 0 says the run trains."""
        train = self.store.get("train") == b"yes"
        self.store.set(f"heard {self.ranks.rank}", "")
        if not train:
            return
        try:
            target(self.ranks, self.join, *args)
        except Exception as e:
            note = [f"rank {self.ranks.rank}: {type(e).__name__}: {e}",
                    traceback.format_exc()[-TRACEBACK_CHARS:]]
            try:
                self.store.compare_set("failed", "", json.dumps(note))  # the first rank to fail is the run's
            except dist.DistError:  # rank 0 is gone too: none left to record it
                pass
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
