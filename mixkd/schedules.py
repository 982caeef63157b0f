"""Learning-rate schedules: pure functions of training progress (in epochs) → multiplier of the base lr.

Evaluated every step at fractional epoch t, so cosine is smooth within an epoch while multistep
stays piecewise constant per epoch as in RepDistiller (decay once epoch index ≥ milestone).
"""

from __future__ import annotations

import math
from functools import lru_cache

from .config import Component
from .registry import Registry

# A schedule: (t, epochs, **params) → the lr factor at fractional epoch t of a run of `epochs`.
SCHEDULES: Registry = Registry("schedule", inputs=("t", "epochs"))


@SCHEDULES.register()
def multistep(t: float, epochs: int, milestones: list[int] = (150, 180, 210), gamma: float = 0.1) -> float:
    """×gamma at each milestone epoch (RepDistiller: 0.1 at 150, 180, 210 of 240)."""
    return gamma ** sum(int(t) >= m for m in milestones)


@SCHEDULES.register()
def cosine(t: float, epochs: int, min_factor: float = 0.0) -> float:
    """Half-cosine from 1 to `min_factor` over the run, per step."""
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(t / epochs, 1.0)))


@SCHEDULES.register()
def constant(t: float, epochs: int) -> float:
    """The base lr throughout."""
    return 1.0


@SCHEDULES.register("timm")
def timm_schedule(t: float, epochs: int, sched: str = "cosine", min_factor: float = 0.0,
                  warmup_factor: float = 1e-3, warmup_epochs: int = 0, warmup_prefix: bool = False,
                  cooldown_epochs: int = 0, decay_epochs: float = 30.0, decay_milestones: list[int] = (90, 180, 270),
                  decay_rate: float = 0.1, k_decay: float = 1.0, per_step: bool = False) -> float:
    """timm's scheduler factory (cosine, tanh, step, multistep, poly): its warm-up from warmup_factor·lr over
    warmup_epochs and cool-down at min lr, lrs as fractions of the recipe's; per epoch as timm's train.py steps
    it, or per step. The run's epochs include the cool-down (timm's train.py trains epochs + cooldown_epochs).
    Set the recipe's own warmup_epochs to 0 beside it: the two warm-ups would multiply."""
    scheduler = _timm_scheduler(sched, epochs - cooldown_epochs, min_factor, warmup_factor, warmup_epochs,
                                warmup_prefix, cooldown_epochs, decay_epochs, tuple(decay_milestones), decay_rate,
                                k_decay)
    return scheduler._get_lr(t if per_step else math.floor(t))[0]


TIMM_SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly")


@lru_cache(maxsize=32)
def _timm_scheduler(sched: str, epochs: int, min_factor: float, warmup_factor: float, warmup_epochs: int,
                    warmup_prefix: bool, cooldown_epochs: int, decay_epochs: float, decay_milestones: tuple,
                    decay_rate: float, k_decay: float):
    """One timm scheduler per setting, on a dummy optimizer at lr 1, so its lrs are factors: built once, read
    at every step."""
    import torch
    from timm.scheduler import create_scheduler_v2

    if sched == "plateau":
        raise ValueError("plateau steps on a validation metric, which mixkd's schedules do not see")
    if sched not in TIMM_SCHEDULES:
        raise ValueError(f"sched {sched!r} is none of timm's epoch schedules: {', '.join(TIMM_SCHEDULES)}")
    for name, value in (("warmup_epochs", warmup_epochs), ("cooldown_epochs", cooldown_epochs)):
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value}")
    if epochs < 1:
        raise ValueError(f"cooldown_epochs ({cooldown_epochs}) leaves no epoch of the run to the schedule")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, _ = create_scheduler_v2(optimizer, sched, epochs, decay_epochs, list(decay_milestones),
                                       cooldown_epochs, decay_rate=decay_rate, min_lr=min_factor,
                                       warmup_lr=warmup_factor, warmup_epochs=warmup_epochs,
                                       warmup_prefix=warmup_prefix, k_decay=k_decay)
    if scheduler is None:
        raise ValueError(f"timm has no scheduler {sched!r}")
    return scheduler


def lr_factor(schedule: Component, step: int, steps_per_epoch: int, epochs: int,
              warmup_epochs: float) -> float:
    """Multiplier for optimizer step `step` (0-based): the schedule at t = step / steps_per_epoch,
    times a linear warm-up that reaches 1 after `warmup_epochs` (the first step already moves)."""
    factor = SCHEDULES.get(schedule.name)(step / steps_per_epoch, epochs, **schedule.kwargs())
    if warmup_epochs > 0:
        factor *= min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))
    return factor
