"""The training loop: runs start to finish, one alone or several in lockstep (`train_group`).

Everything random derives from the run's seed through separate streams (model init, data order and
augmentation, mixing draws), so runs that differ only in student, temperature or loss see the same
batches and the same mixes: their differences are paired comparisons. That is also what lets such runs
train in lockstep, sharing one loader, one mixing draw and one teacher forward per batch, with results
equal to training each alone.
"""

from __future__ import annotations

import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import Tensor, nn
from tqdm.auto import tqdm

from .build import built_loss, placed_model
from .config import RunConfig
from .distill import Distiller, TeacherForward
from .engine import DeviceEngine
from .errors import NoSpaceLeft
from .fuse import FusedStudents, fuse
from .losses import FeatureLoss
from .metrics import compute_metrics, predict
from .mixing import Mixer
from .optimizers import build_optimizer
from .ranks import Ranks
from .schedules import lr_factor


class NonFiniteLoss(RuntimeError):
    pass


# Errors that are no run's own, so they stop the study (its checkpoints stay, to resume from): a full disk,
# which every later run would hit, and a failed CUDA kernel (a device-side assert, an illegal access), which
# poisons the process's CUDA context and is reported at some later call, perhaps another run's.
STOPS_THE_STUDY = (NoSpaceLeft, *(e for e in (getattr(torch, "AcceleratorError", None),) if e is not None))


def mixing_rng(seed: int, rank: int = 0) -> np.random.Generator:
    """Its own stream: mixing draws don't depend on the model. Rank r > 0 of a run across devices mixes its shard
    with draws of its own, (seed, rank)'s."""
    return np.random.default_rng([seed, 1, rank] if rank else [seed, 1])


def shared_rng_states(loader, rng: np.random.Generator) -> dict:
    """The streams every run of a lockstep group shares, in types `torch.load(weights_only=True)` accepts."""
    return {"loader": loader.generator.get_state(),  # per-epoch permutation and augmentation draws
            "mixing": rng.bit_generator.state}  # a dict of ints and strings


def torch_rng_state(device: torch.device) -> dict:
    """The global streams a run draws from on `device` (its GPU's alone: a resumed run may see fewer)."""
    return {"torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def set_torch_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)


@dataclass
class Progress:
    """Where training stands at an epoch boundary: enough, with the model, optimizer and RNG states,
    to continue exactly as if never stopped."""

    epoch: int = 0
    step: int = 0
    best: tuple[float, int] = (-1.0, 0)  # (top-1, epoch)
    scores: dict = field(default_factory=dict)  # the last evaluation's metrics
    seconds: float = 0.0  # time spent in epochs 1..epoch, over every attempt
    ema_scores: dict = field(default_factory=dict)  # the last evaluation's metrics of the weights' EMA, if any

    @classmethod
    def from_checkpoint(cls, state: dict) -> "Progress":
        return cls(state["epoch"], state["step"], tuple(state["best"]), state["scores"], state["seconds"],
                   state.get("ema_scores", {}))


class Journal(Protocol):
    """Where the loop records a run (its `RunDir`): the checkpoint it resumes from, epochs, checkpoints."""

    def resume_state(self, device: str) -> dict | None: ...

    def log_epoch(self, record: dict) -> None: ...

    def save_checkpoint(self, state: dict) -> None: ...


class Member:
    """One run of a lockstep group: its model, optimizer, loss, global-RNG stream and records.

    The batches, mixes and teacher outputs are the group's. Its own copy of torch's global RNG state
    (what dropout and drop-path draw from) is swapped in around each of its steps, so each run draws
    exactly what it would alone.

    With `ranks`, this process is one rank of a run across devices (`mixkd.ranks`): every rank builds the same
    weights from the seed, then draws from a stream of its own; its errors are raised, never recorded (a rank
    cannot fail alone); rank 0 alone evaluates and writes the journal.
    """

    def __init__(self, run: RunConfig, data, engine: DeviceEngine, teacher: nn.Module | None,
                 journal: Journal | None = None, ranks: Ranks | None = None):
        self.run, self.recipe, self.engine, self.journal, self.ranks = run, run.recipe, engine, journal, ranks
        torch.manual_seed(run.seed)
        self.model = placed_model(run, data, engine)
        if self.recipe.sync_bn:  # statistics over the global batch (CUDA only: `ranks.check_devices`)
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.loss = built_loss(run, self.model, teacher, data, engine)
        self.parts = self.loss if isinstance(self.loss, FeatureLoss) else None  # a method's trainable parts
        self.distiller = Distiller(engine.compiled(self.model), teacher if run.distill else None, self.loss,
                                   run.view, data.num_classes, self.recipe.label_smoothing)
        extra = self.parts.main_parameters() if self.parts is not None else []
        self.optimizer = build_optimizer(self.model, list(extra), self.recipe, engine)
        # DeiT's EMA of the weights (timm's), updated after every step of the run's own recipe
        self.ema = ModelEmaV3(self.model, decay=self.recipe.ema_decay) if self.recipe.ema_decay else None
        # a method's own pre-training stage (FSP, AB, FT): its first epochs, with an optimizer of its own
        self.init_epochs = self.parts.init_epochs if self.parts is not None else 0
        self.epochs = self.init_epochs + self.recipe.epochs
        self.init_optimizer = engine.sgd(self.parts.init_parameters(self.model), self.recipe,
                                         lr=self.parts.init_lr(self.recipe.lr, self.model)) \
            if self.init_epochs else None
        if ranks is not None and not ranks.lead:
            torch.manual_seed(int(np.random.SeedSequence([run.seed, 2, ranks.rank]).generate_state(1)[0]))
        self.rng, self.progress, self.error = torch_rng_state(engine.device), Progress(), None
        self.resumed_from, self.shared_rng = 0, None
        self.fused = 1  # the most runs this one was fused with (itself included): 1, never fused
        self.fusable = True  # False once a fused step of its architecture failed: unfused from then on
        self.epoch_sums: dict[str, Tensor] = {}  # loss parts × images, on the device until the epoch ends

    def resume(self) -> None:
        """Restore the run's last checkpoint, if any (its journal cuts the epoch log back to it)."""
        state = self.journal.resume_state(self.engine.device.type)
        if self.ranks is not None:
            state = self.ranks.agreed(state)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.load_optimizer(self.optimizer, state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.parts is not None:
            self.parts.load_state_dict(state["distiller"])
        if self.init_optimizer is not None:
            self.load_optimizer(self.init_optimizer, state["init_optimizer"])
        rng = state["rng"][self.ranks.rank] if self.ranks is not None else state["rng"]  # each rank's own
        self.rng = {k: rng[k] for k in ("torch", "cuda")}
        self.shared_rng = {k: rng[k] for k in ("loader", "mixing")}
        self.progress = Progress.from_checkpoint(state)
        self.resumed_from = self.progress.epoch

    def load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """The checkpoint's optimizer state on this engine's kernel: `load_state_dict` would also restore the
        saved fused/foreach flags, and momentum in the saved memory layout, which CUDA's fused SGD refuses
        for channels_last weights."""
        optimizer.load_state_dict(state)
        if not isinstance(optimizer, torch.optim.SGD):
            return
        for group in optimizer.param_groups:
            group.update(self.engine.sgd_kernel())
        for p, s in optimizer.state.items():
            if s.get("momentum_buffer") is not None and s["momentum_buffer"].stride() != p.stride():
                s["momentum_buffer"] = torch.empty_like(p).copy_(s["momentum_buffer"])

    def guarded(self, fn, *args) -> None:
        """Call one of this run's steps; an error ends this run as failed, not its group."""
        try:
            fn(*args)
        except STOPS_THE_STUDY:
            raise
        except Exception as e:  # noqa: BLE001 - recorded with its traceback by the runner
            if self.ranks is not None:  # its process ends, and the launcher ends the other ranks
                raise
            traceback.clear_frames(e.__traceback__)  # the failed step's tensors: memory the group still needs
            self.error = e

    @contextmanager
    def own_rng(self):
        set_torch_rng_state(self.rng, self.engine.device)
        yield
        self.rng = torch_rng_state(self.engine.device)

    def step(self, x: Tensor, y: Tensor, index: Tensor, mix, teacher_out: TeacherForward | None, epoch: int,
             steps: int) -> None:
        """One optimisation step; the loss parts are summed on the device and read once per epoch. In a method's
        pre-training epochs, its own loss on the clean batch at a constant learning rate; then the run's, on its
        schedule counted from the end of pre-training."""
        pretraining = epoch <= self.init_epochs
        optimizer = self.init_optimizer if pretraining else self.optimizer
        if not pretraining:
            self.schedule_lr(steps)
        with self.own_rng(), self.engine.autocast():
            _, parts = self.distiller.forward_train(x, y, mix, epoch - self.init_epochs, teacher_out, index,
                                                    pretraining)
        total = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        clipped = self.recipe.clip_grad is not None and not pretraining
        if self.ranks is not None or clipped:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if self.ranks is not None:
                self.ranks.average_gradients(params, len(y))
            if clipped:
                dispatch_clip_grad(params, self.recipe.clip_grad, self.recipe.clip_mode)
        optimizer.step()
        if self.ema is not None and not pretraining:
            self.ema.update(self.model)
        self.tally(parts, total, len(y))

    def schedule_lr(self, steps: int) -> float:
        """Set the lr of the run's next step from its schedule, counted from the end of pre-training."""
        r = self.recipe
        step = self.progress.step - self.init_epochs * steps
        lr = r.lr * lr_factor(r.schedule, step, steps, r.epochs, r.warmup_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def tally(self, parts: dict[str, Tensor], total: Tensor, images: int) -> None:
        """Add a step's loss parts to the epoch's sums (on the device) and count the step."""
        for name, value in {**parts, "loss": total}.items():
            value = value.detach() * images
            self.epoch_sums[name] = self.epoch_sums[name] + value if name in self.epoch_sums else value
        self.progress.step += 1

    def end_epoch(self, epoch: int, images: int, seconds: float, eval_loader, shared_rng: dict,
                  checkpoint_every: int) -> None:
        """Evaluate, log the epoch and checkpoint; a non-finite loss ends the run as failed. Across devices the
        loss sums are every rank's (so all see a non-finite one) and the checkpoint holds each rank's streams."""
        sums = self.epoch_sums if self.ranks is None else self.ranks.sums(self.epoch_sums)
        train = {f"train_{k}": v.item() / images for k, v in sums.items()}
        self.epoch_sums = {}
        if not np.isfinite(train["train_loss"]):
            raise NonFiniteLoss(f"training loss became {train['train_loss']} in epoch {epoch}")
        rng, checkpoint = {**self.rng, **shared_rng}, epoch % checkpoint_every == 0 or epoch == self.epochs
        if self.ranks is not None:
            rng = self.ranks.gathered(rng) if checkpoint else None
            if not self.ranks.lead:
                self.progress.epoch = epoch
                return
        logits, labels = predict(self.model, eval_loader)  # fp32, as the analyses evaluate: one set of metrics
        p = self.progress
        p.epoch, p.scores = epoch, compute_metrics(logits, labels)
        if p.scores["top1"] > p.best[0]:
            p.best = (p.scores["top1"], epoch)
        p.seconds += seconds
        ema = {}
        if self.ema is not None:
            p.ema_scores = compute_metrics(*predict(self.ema.module, eval_loader))
            ema = {"ema_test_top1": p.ema_scores["top1"], "ema_test_loss": p.ema_scores["nll"]}
        optimizer = self.init_optimizer if epoch <= self.init_epochs else self.optimizer
        self.journal.log_epoch({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **train,
                                "test_top1": p.scores["top1"], "test_loss": p.scores["nll"], **ema,
                                "seconds": seconds})
        if checkpoint:
            self.journal.save_checkpoint({
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": p.epoch,
                "step": p.step, "best": list(p.best), "scores": p.scores, "seconds": p.seconds,
                "rng": rng, "device": self.engine.device.type,
                **({"distiller": self.parts.state_dict()} if self.parts is not None else {}),
                **({"ema": self.ema.state_dict(), "ema_scores": p.ema_scores} if self.ema is not None else {}),
                **({"init_optimizer": self.init_optimizer.state_dict()} if self.init_optimizer else {})})

    def result(self, data, group_size: int) -> dict:
        p, epochs = self.progress, self.epochs
        parts = sum(t.numel() for t in self.parts.parameters()) if self.parts is not None else 0
        return {**{f"{k}_last": v for k, v in p.scores.items()}, "top1_best": p.best[0], "best_epoch": p.best[1],
                **{f"ema_{k}_last": v for k, v in p.ema_scores.items()},
                "distiller_params": parts,
                "train_seconds": p.seconds, "images_per_s": epochs * data.num_train_images / p.seconds,
                "resumed_from_epoch": self.resumed_from, "eval_split": getattr(data, "eval_split", "test"),
                "lockstep_size": group_size, "fused_size": self.fused, **self.engine.record()}


class Lockstep:
    """Runs that share batches, mixes and teacher, stepped together: per batch one mixing draw and at most
    one teacher forward per input (clean, mixed), then each live member's own step."""

    def __init__(self, members: list[Member], mixer: Mixer, rng: np.random.Generator, teacher: nn.Module | None,
                 engine: DeviceEngine, loader=None):
        self.members, self.mixer, self.rng, self.teacher, self.engine = members, mixer, rng, teacher, engine
        self.loader = loader
        self.blocks: list[FusedStudents] = []  # this epoch's fused members (`engine.fuse`)

    @classmethod
    def of(cls, members: list[Member], data, engine: DeviceEngine, teacher: nn.Module | None) -> "Lockstep":
        """The group `members` (runs of one lockstep key, `engine.lockstep_key`) train in: the mixer, mixing
        generator and loader their seed and recipe give, at the shared streams' state they resume from. Across
        devices (a group of one), the loader yields this rank's shard of each batch."""
        lead, ranks = members[0], members[0].ranks
        options = lead.recipe.loader_options()
        if ranks is not None:
            options["shard"] = (ranks.rank, ranks.world)
        loader = data.train_loader(lead.recipe.batch_size, engine.device, lead.run.seed, **options)
        rng = mixing_rng(lead.run.seed, ranks.rank if ranks is not None else 0)
        if lead.shared_rng is not None:
            loader.generator.set_state(lead.shared_rng["loader"])
            rng.bit_generator.state = lead.shared_rng["mixing"]
        return cls(members, Mixer.of(lead.run.mix), rng, teacher, engine, loader)

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if m.error is None]

    def begin_epoch(self) -> None:
        """Put the members in training mode and, with `engine.fuse`, fuse those that can be for the epoch."""
        for m in self.live:
            m.distiller.train()
        if self.engine.fuse:
            self.blocks, _ = fuse(self.live, self.mixer)
        for block in self.blocks:
            for m in block.members:
                m.fused = max(m.fused, len(block.members))

    def end_epoch(self) -> None:
        """Write the fused members' state back into their own models and optimizers."""
        for block in self.blocks:
            block.unfuse()
        self.blocks = []

    def step(self, x: Tensor, y: Tensor, index: Tensor, epoch: int, steps: int) -> None:
        x = self.engine.layout(x)
        mix = self.mixer(x, y, self.rng)
        teacher_out = TeacherForward(self.teacher, x, mix, self.taps) if self.teacher is not None else None
        fused = {id(m) for block in self.blocks for m in block.members}
        for block in self.blocks:
            self.step_fused(block, x, y, index, mix, teacher_out, epoch, steps)
        for m in self.live:
            if id(m) not in fused:
                m.guarded(m.step, x, y, index, mix, teacher_out, epoch, steps)

    def step_fused(self, block: FusedStudents, x: Tensor, y: Tensor, index: Tensor, mix, teacher_out,
                   epoch: int, steps: int) -> None:
        """One step of a fused block: one forward, each member's own loss, one backward, one SGD step. An
        error fails every member of the block (their step is one)."""
        members = block.members
        if any(m.error is not None for m in members):
            return
        try:
            lrs = [m.schedule_lr(steps) for m in members]
            with self.engine.autocast():
                logits = block.forward([mix.x if m.run.view.student_mixed else x for m in members])
                parts = [m.distiller.losses(logits[i], x, y, mix, epoch, teacher_out, index)[1]
                         for i, m in enumerate(members)]
            totals = [sum(p.values()) for p in parts]
            sum(totals).backward()
            block.step(lrs)
        except STOPS_THE_STUDY:
            raise
        except Exception as e:  # noqa: BLE001 - recorded with its traceback by the runner
            traceback.clear_frames(e.__traceback__)
            if block.steps == 0:  # fusion itself failed (an op vmap cannot batch, say): its members' own models
                self.unfuse_for_good(block, e)  # are as the epoch began, so they take this step unfused
                for m in members:
                    m.guarded(m.step, x, y, index, mix, teacher_out, epoch, steps)
                return
            for m in members:
                m.error = e
            return
        for m, p, total in zip(members, parts, totals):
            m.tally(p, total, len(y))

    def unfuse_for_good(self, block: FusedStudents, error: Exception) -> None:
        """Train `block`'s members unfused from now on, and say why once."""
        self.blocks.remove(block)
        for m in block.members:
            m.fused, m.fusable = 1, False
        warnings.warn(f"{len(block.members)} runs of {block.members[0].run.model} could not be fused and train "
                      f"unfused: {type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)

    @property
    def taps(self) -> frozenset[str] | None:
        """What the group's feature methods need of the teacher's forward (None: logits alone)."""
        needed = [m.parts.taps for m in self.live if m.parts is not None]
        return frozenset().union(*needed) if needed else None


def train_group(runs: list[RunConfig], journals: list[Journal], data, engine: DeviceEngine,
                teacher: nn.Module | None = None, desc: str = "", checkpoint_every: int = 1,
                ranks: Ranks | None = None) -> list[Member]:
    """Train runs sharing a lockstep key (`engine.lockstep_key`) together, each resuming from its own
    checkpoint; log each epoch and checkpoint every `checkpoint_every` epochs (and the last) to its journal.
    Returns the members: a finished model and `result()`, or `error` set. Alone, a run is a group of one:
    this is the one training loop. With `ranks`, this process trains its rank of a run across devices."""
    members = [_member(r, data, engine, teacher, j, ranks) for r, j in zip(runs, journals)]
    for m in members:
        if m.error is None:
            m.guarded(m.resume)
    # members that stopped at different epochs (a kill between their checkpoints) catch up one cohort at a time
    for epoch in sorted({m.progress.epoch for m in members if m.error is None}):
        cohort = [m for m in members if m.error is None and m.progress.epoch == epoch]
        _train_cohort(Lockstep.of(cohort, data, engine, teacher), data, desc, checkpoint_every)
    return members


class Unbuilt:
    """A run of a group whose model or method could not be built: recorded as failed, the group goes on."""

    def __init__(self, error: Exception):
        traceback.clear_frames(error.__traceback__)
        self.error = error


def _member(run: RunConfig, data, engine: DeviceEngine, teacher: nn.Module | None, journal: Journal,
            ranks: Ranks | None):
    try:
        return Member(run, data, engine, teacher, journal, ranks)
    except STOPS_THE_STUDY:
        raise
    except Exception as e:  # noqa: BLE001 - recorded with its traceback by the runner
        return Unbuilt(e)


HEARTBEAT_SECONDS = 30.0


class Heartbeat:
    """Where no progress bar is drawn (a Slurm or CI log), a line every `HEARTBEAT_SECONDS` while a group
    trains: a log is never silent for minutes. Rates count student images, as the bar does."""

    def __init__(self, desc: str, total: int, done: int):
        self.desc, self.total, self.done = desc, total, done
        self.start = self.last = time.monotonic()
        self.first = done

    def update(self, images: int, epoch: int, epochs: int) -> None:
        self.done += images
        now = time.monotonic()
        if now - self.last < HEARTBEAT_SECONDS:
            return
        self.last = now
        rate = (self.done - self.first) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        print(f"  {self.desc}: epoch {epoch}/{epochs}, {rate:.0f} img/s, ETA {eta / 60:.1f} min", flush=True)


def _train_cohort(group: Lockstep, data, desc: str, checkpoint_every: int):
    members, engine, loader, rng = group.members, group.engine, group.loader, group.rng
    sizes = {m.recipe.eval_batch_size for m in members}
    eval_loaders = {b: data.eval_loader(b, engine.device) for b in sizes}
    epochs, start, n = members[0].epochs, members[0].progress.epoch, data.num_train_images
    if len(members) > 1:
        desc = f"{desc} +{len(members) - 1} in lockstep"
    ranks = members[0].ranks
    shown = ranks is None or ranks.lead  # one bar or heartbeat per run, its rank 0's
    world = ranks.world if ranks is not None else 1  # a shard × world: the global batch (but a last uneven one)
    bar = tqdm(total=epochs * n, initial=start * n, unit="img", unit_scale=True, desc=desc, leave=False,
               disable=None if shown else True, dynamic_ncols=True)
    beat = Heartbeat(desc, epochs * n, start * n) if bar.disable and shown else None  # a log, not a terminal
    for epoch in range(start + 1, epochs + 1):
        clock = time.perf_counter()
        group.begin_epoch()
        for x, y, index in loader:
            group.step(x, y, index, epoch, len(loader))
            bar.update(len(y) * world)
            if beat is not None:
                beat.update(len(y) * world, epoch, epochs)
        group.end_epoch()
        engine.synchronize()  # the epoch's queued GPU work belongs to its time, not to its evaluation's
        seconds = time.perf_counter() - clock
        shared = shared_rng_states(loader, rng)
        for m in group.live:
            m.guarded(m.end_epoch, epoch, n, seconds, eval_loaders[m.recipe.eval_batch_size], shared,
                      checkpoint_every)
        live = group.live
        if not live:
            break
        if not shown:  # no scores: rank 0 evaluates
            continue
        top1 = max(m.progress.scores["top1"] for m in live)
        bar.set_postfix(epoch=epoch, top1=f"{top1:.3f}" if len(live) == 1 else f"≤{top1:.3f}")
    bar.close()
