"""How runs compute on the device: precision, memory layout, optimizer kernels, compilation, lockstep.

A study's `engine:` section sets these. They are kept out of run ids (like `resources`) because they
change how fast a run trains, not what it computes beyond floating-point noise; every run's summary
records the settings it trained with (`engine_*` columns of runs.csv), so any table can be split by them.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .config import Recipe, RunSpec
from .errors import MixkdError

RECOMPILE_LIMIT = 64  # compiled versions of one forward a process keeps (dynamo's default: 8)


def resolve_device(name: str) -> torch.device:
    """--device: cpu, cuda, or auto (cuda where there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MixkdError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work, so a clock read next includes it (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Engine:
    """What a study asks for; `auto` picks the fast setting on CUDA and plain fp32 eager on the CPU."""

    precision: Literal["auto", "bf16", "fp32"] = "auto"  # bf16 autocast (no loss scaling needed) or fp32
    channels_last: Literal["auto", True, False] = "auto"  # NHWC activations: what cuDNN's tensor-core convs want
    optimizer: Literal["auto", "fused", "foreach", "loop"] = "auto"  # SGD kernel: one fused launch, or per tensor
    compile: Literal[False, "default", "reduce-overhead", "max-autotune"] = False  # reduce-overhead: CUDA graphs
    lockstep: int = 8  # most runs trained together, sharing batches, mixes and teacher forwards; 1: one by one
    # students of one architecture in a lockstep group trained as one fused model (`mixkd.fuse`). auto: off,
    # until `mixkd bench` has measured fusion faster on a device (2 CPU cores: 0.47-0.86x unfused)
    fuse: Literal["auto", True, False] = "auto"
    # CPU threads of a run. Fixed, not one per core: threads split reductions, and their order changes the
    # last bits, so a run's numbers would depend on the machine and the executor. --workers fills the cores.
    cpu_threads: int = 1

    def resolve(self, device: torch.device) -> "DeviceEngine":
        cuda = device.type == "cuda"
        # bf16 where the GPU has bf16 tensor cores (Ampere on); older GPUs emulate it, slower than fp32
        emulated = torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False)
        auto = {"precision": "bf16" if cuda and not emulated else "fp32", "channels_last": cuda,
                "optimizer": "fused" if cuda else "loop"}
        pick = {k: auto[k] if getattr(self, k) == "auto" else getattr(self, k) for k in auto}
        return DeviceEngine(device, pick["precision"], pick["channels_last"], pick["optimizer"], self.compile,
                            self.lockstep, self.cpu_threads, self.fuse not in ("auto", False))


@dataclass(frozen=True)
class DeviceEngine:
    """The engine settled for one device: the helpers the training loop calls."""

    device: torch.device
    precision: str
    channels_last: bool
    optimizer: str
    compile: str | bool
    lockstep: int
    cpu_threads: int
    fuse: bool = False

    def claim_threads(self) -> None:
        """Set this process's torch thread count for the runs about to train (CPU only)."""
        if self.device.type == "cpu":
            torch.set_num_threads(self.cpu_threads)

    def synchronize(self) -> None:
        synchronize(self.device)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the memory format the models were put in (a no-op when it already is)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` on the device in the engine's memory format. On CUDA also lets cuDNN time its conv
        algorithms once per shape: a run repeats a handful of shapes thousands of times."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """What the loop calls: `model` itself, or its compiled wrapper (which shares its parameters, so
        checkpoints and evaluation keep using `model`).

        Every zoo model runs the one `StagedNet.forward`, and dynamo keeps at most `recompile_limit` (8)
        compiled versions of a function, each architecture, batch shape and grad mode taking one: past it,
        a process's later models would silently run eager. Hence a limit sized for a study's grid.
        """
        if not self.compile:
            return model
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        return torch.compile(model, mode=None if self.compile == "default" else self.compile)

    def sgd_kernel(self) -> dict:
        return {"fused": {"fused": True, "foreach": None}, "foreach": {"fused": None, "foreach": True},
                "loop": {"fused": None, "foreach": False}}[self.optimizer]

    def sgd(self, params, recipe: Recipe, lr: float | None = None) -> torch.optim.SGD:
        r = recipe
        return torch.optim.SGD(params, lr=r.lr if lr is None else lr, momentum=r.momentum,
                               weight_decay=r.weight_decay, nesterov=r.nesterov, **self.sgd_kernel())

    def record(self) -> dict:
        """The settings as summary fields: scalars, so they become runs.csv columns."""
        return {"engine_precision": self.precision, "engine_channels_last": self.channels_last,
                "engine_optimizer": self.optimizer, "engine_compile": str(self.compile or "off"),
                "engine_fuse": self.fuse,
                "engine_cpu_threads": self.cpu_threads if self.device.type == "cpu" else None}


def lockstep_key(spec: RunSpec) -> str | None:
    """Runs with equal keys see identical batches, mixes and teacher outputs when trained alone with their
    seed, so they can share them: same teacher, data, batch size, epochs (a method's pre-training epochs
    included), what the loader draws beside the batches (`Recipe.loader_options`), mixing variant and seed.
    They may differ in student, temperature, loss, mixed view and the rest of the recipe. Imported teachers
    train nothing, and a run across devices trains in processes of its own (`mixkd.ranks`): no key."""
    run = spec.run
    if run.imported or run.recipe.devices > 1:
        return None
    shared = {"teacher": run.teacher, "dataset": run.dataset.as_dict(), "mix": run.mix.as_dict(),
              "seed": run.seed, "batch_size": run.recipe.batch_size, "epochs": run.epochs,
              **run.recipe.loader_options()}
    return json.dumps(shared, sort_keys=True)


def lockstep_groups(specs: list[RunSpec], size: int) -> list[list[RunSpec]]:
    """`specs` (teachers first) as groups of at most `size` runs with one lockstep key, in the order of each
    group's first run, so every teacher's group still precedes its students'."""
    filling: dict[str, list] = {}  # key → its newest group, still taking runs until it holds `size`
    ordered: list[list] = []
    for spec in specs:
        key = lockstep_key(spec)
        group = filling.get(key)
        if group is not None and len(group) < size:
            group.append(spec)
            continue
        ordered.append([spec])
        if key is not None:
            filling[key] = ordered[-1]
    return ordered
