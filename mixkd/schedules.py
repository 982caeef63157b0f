"""Learning-rate schedules: pure functions of training progress (in epochs) → multiplier of the base lr.

Evaluated every step at fractional epoch t, so cosine is smooth within an epoch while multistep
stays piecewise constant per epoch as in RepDistiller (decay once epoch index ≥ milestone).
"""

from __future__ import annotations

import math

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


def lr_factor(schedule: Component, step: int, steps_per_epoch: int, epochs: int,
              warmup_epochs: float) -> float:
    """Multiplier for optimizer step `step` (0-based): the schedule at t = step / steps_per_epoch,
    times a linear warm-up that reaches 1 after `warmup_epochs` (the first step already moves)."""
    factor = SCHEDULES.get(schedule.name)(step / steps_per_epoch, epochs, **schedule.kwargs())
    if warmup_epochs > 0:
        factor *= min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))
    return factor
