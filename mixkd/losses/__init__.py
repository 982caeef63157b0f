"""Distillation losses, one registry (`LOSSES`) whatever a loss reads: logits (`logit`), intermediate features
(`feature`), the batch's relations (`relational`), a memory of every image (`contrastive`). A study's `loss`
axis names any of them; `mixkd list losses` shows each with its paper, parameters and defaults."""

from __future__ import annotations

from .base import (LOSSES, BuildContext, FeatureLoss, LossInputs, Shapes, kd_kl, non_negative, probe,
                   soft_cross_entropy)
from .logit import CE, DIST, DKD, KD, StdKD, dkd_terms, kl_rows, standardize


def create_loss(name: str, temperature: float | None = None, **params):
    """Loss `name` at `temperature` (its default when None) with `params`, checked when the study was read."""
    cls = LOSSES.get(name, "loss.name")
    return cls(temperature=temperature, **params) if temperature is not None else cls(**params)


from . import contrastive, feature, relational  # noqa: E402,F401  (registration)

__all__ = ["CE", "DIST", "DKD", "KD", "LOSSES", "BuildContext", "FeatureLoss", "LossInputs", "Shapes", "StdKD",
           "create_loss", "dkd_terms", "kd_kl", "kl_rows", "non_negative", "probe", "soft_cross_entropy",
           "standardize"]
