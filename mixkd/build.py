"""The models a run uses (and a distillation method's trainable parts), built for its data and put on its
device: the one place both happen.

A run's own model is its config's architecture at the data's shape; a student's teacher is the model of a
finished teacher run (`mixkd.work` loads its weights) or a RepDistiller/mdistiller checkpoint it imports.
Students and teachers reach the device here alike, through the engine (memory format, compilation).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import RunConfig
from .engine import DeviceEngine
from .losses import BuildContext, FeatureLoss, create_loss, probe
from .metrics import compute_metrics, predict
from .models import StagedNet, create_model
from .models.checkpoint import load_teacher_checkpoint


def build_model(run: RunConfig, data) -> StagedNet:
    """Run `run`'s architecture for `data`'s classes, channels and image size, with fresh weights (drawn from
    torch's global generator: seed it first)."""
    return create_model(run.model, num_classes=data.num_classes, in_chans=data.in_chans,
                        img_size=data.img_size, **run.model_args.thaw())


def placed_model(run: RunConfig, data, engine: DeviceEngine) -> StagedNet:
    """A model to train: `build_model` on the engine's device, in its memory format."""
    return engine.prepare(build_model(run, data))


def built_loss(run: RunConfig, student: nn.Module, teacher: nn.Module | None, data, engine: DeviceEngine):
    """The run's loss at its temperature; a feature method with its trainable parts built from the two models'
    feature shapes (a probe of each) and placed on the engine's device. Called right after the student is
    built, on the run's seeded stream, so the parts' initial weights are the same alone or in lockstep."""
    loss = create_loss(run.loss.name, temperature=run.temperature, **run.loss.kwargs())
    if isinstance(loss, FeatureLoss):
        image = (data.in_chans, data.img_size, data.img_size)
        targets = getattr(data, "train_targets", None)
        context = BuildContext(student, teacher, data.num_train_images,
                               None if targets is None else torch.as_tensor(targets, device=engine.device),
                               run.seed, engine.device)
        shapes = probe(student, image, loss.taps, engine.device), probe(teacher, image, loss.taps, engine.device)
        loss.check(*shapes)
        loss.build(*shapes, context)
        engine.prepare(loss)
    return loss


def frozen_teacher(model: nn.Module, engine: DeviceEngine) -> nn.Module:
    """A trained teacher as its students read it: in eval mode on the engine's device, laid out and compiled
    as the engine says."""
    return engine.compiled(engine.prepare(model).eval())


def import_teacher(run: RunConfig, checkpoint: str | Path, data,
                   engine: DeviceEngine) -> tuple[dict, nn.Module]:
    """A teacher given as a RepDistiller/mdistiller checkpoint, loaded strictly and evaluated (fp32, as a
    trained run's last epoch is): its result fields, and the model to save as the run's checkpoint."""
    model = build_model(run, data)
    load_teacher_checkpoint(model, checkpoint)
    device = engine.device
    scores = compute_metrics(*predict(model.to(device), data.eval_loader(run.eval_batch_size, device)))
    return {**{f"{k}_last": v for k, v in scores.items()}, "top1_best": scores["top1"], "best_epoch": None,
            "train_seconds": 0.0, "eval_split": getattr(data, "eval_split", "test")}, model
