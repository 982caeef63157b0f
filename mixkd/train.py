"""The training loop: one run, start to finish, in one readable function (nanoGPT-style).

Everything random derives from the run's seed through separate streams (model init, data order and
augmentation, mixing draws), so runs that differ only in student, temperature or loss see the same
batches and the same mixes: their differences are paired comparisons.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .distill import Distiller
from .losses import CE, create_loss
from .metrics import compute_metrics, predict
from .mixing import Mixer
from .models import create_model
from .models.checkpoint import load_teacher_checkpoint
from .rundir import RunDir
from .schedules import lr_factor


class NonFiniteLoss(RuntimeError):
    pass


def build_model(config: dict, data) -> nn.Module:
    return create_model(config["model"], num_classes=data.num_classes, in_chans=data.in_chans,
                        img_size=data.img_size, **config.get("model_args", {}))


def mixing_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1])  # its own stream: mixing draws don't depend on the model


def split_params(params: dict) -> tuple[str, dict]:
    params = dict(params)
    return params.pop("name"), params


def rng_states(device: torch.device, loader, rng: np.random.Generator) -> dict:
    """Every random stream a run draws from, in types `torch.load(weights_only=True)` accepts."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "loader": loader.generator.get_state(),  # per-epoch permutation and augmentation draws
            "mixing": rng.bit_generator.state}  # a dict of ints and strings


def restore_rng_states(states: dict, loader, rng: np.random.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    loader.generator.set_state(states["loader"])
    rng.bit_generator.state = states["mixing"]


@dataclass
class Progress:
    """Where training stands at an epoch boundary: enough, with the model, optimizer and RNG states,
    to continue exactly as if never stopped."""

    epoch: int = 0
    step: int = 0
    best: tuple[float, int] = (-1.0, 0)  # (top-1, epoch)
    scores: dict = field(default_factory=dict)  # the last evaluation's metrics
    seconds: float = 0.0  # time spent in epochs 1..epoch, over every attempt

    @classmethod
    def from_checkpoint(cls, state: dict) -> "Progress":
        return cls(state["epoch"], state["step"], tuple(state["best"]), state["scores"], state["seconds"])


def resume(rundir: RunDir, model: nn.Module, optimizer, loader, rng: np.random.Generator) -> Progress:
    """Restore the last checkpoint, if any, and cut the epoch log back to it; else start from scratch."""
    state = rundir.training_state()
    if state is None:
        rundir.truncate_epochs(0)
        return Progress()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_states(state["rng"], loader, rng)
    rundir.truncate_epochs(state["epoch"])
    return Progress.from_checkpoint(state)


def save_checkpoint(rundir: RunDir, model: nn.Module, optimizer, progress: Progress, rng_state: dict) -> None:
    rundir.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "epoch": progress.epoch, "step": progress.step, "best": list(progress.best),
                            "scores": progress.scores, "seconds": progress.seconds, "rng": rng_state})


def train_run(config: dict, data, device: torch.device, rundir: RunDir, teacher: nn.Module | None = None,
              desc: str = "", checkpoint_every: int = 1) -> tuple[dict, nn.Module]:
    """Train one resolved run config, resuming from its checkpoint if it has one; log each epoch and
    checkpoint every `checkpoint_every` epochs (and the last) to `rundir`; return the final metrics and the model."""
    recipe, seed, distill = config["recipe"], config["seed"], config["distill"]
    torch.manual_seed(seed)
    model = build_model(config, data).to(device)
    if distill:
        loss_name, loss_params = split_params(distill["loss"])
        loss, view = create_loss(loss_name, temperature=distill["temperature"], **loss_params), distill["mixed_view"]
    else:
        loss, view, teacher = CE(), "student", None  # teachers and scratch students: (mixed-)label CE
    mix_params = dict(config["mix"])
    mixer = Mixer(mix_params.pop("name"), mix_params, prob=mix_params.pop("prob"))
    distiller = Distiller(model, teacher, loss, view, data.num_classes, recipe["label_smoothing"])

    train_loader = data.train_loader(recipe["batch_size"], device, seed)
    eval_loader = data.eval_loader(recipe["eval_batch_size"], device)
    rng = mixing_rng(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"], nesterov=recipe["nesterov"])
    epochs, steps = recipe["epochs"], len(train_loader)
    progress = resume(rundir, model, optimizer, train_loader, rng)
    resumed_from = progress.epoch

    bar = tqdm(total=epochs * len(data.train_y), initial=resumed_from * len(data.train_y), unit="img",
               unit_scale=True, desc=desc, leave=False, disable=None, dynamic_ncols=True)
    for epoch in range(resumed_from + 1, epochs + 1):
        epoch_start = time.perf_counter()
        distiller.train()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        seen = 0
        for x, y in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = recipe["lr"] * lr_factor(recipe["schedule"], progress.step, steps, epochs,
                                                       recipe["warmup_epochs"])
            mix = mixer(x, y, rng)
            _, parts = distiller.forward_train(x, y, mix, epoch)
            total = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for name, value in parts.items():  # summed on the device, read once per epoch
                sums[name] += value.detach() * len(y)
            sums["loss"] += total.detach() * len(y)
            seen += len(y)
            progress.step += 1
            bar.update(len(y))
        train = {f"train_{k}": v.item() / seen for k, v in sums.items()}
        if not np.isfinite(train["train_loss"]):
            raise NonFiniteLoss(f"training loss became {train['train_loss']} in epoch {epoch}")
        logits, labels = predict(model, eval_loader)
        progress.epoch, progress.scores = epoch, compute_metrics(logits, labels)
        if progress.scores["top1"] > progress.best[0]:
            progress.best = (progress.scores["top1"], epoch)
        seconds = time.perf_counter() - epoch_start
        progress.seconds += seconds
        rundir.log_epoch({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **train,
                          "test_top1": progress.scores["top1"], "test_loss": progress.scores["nll"],
                          "seconds": seconds})
        if epoch % checkpoint_every == 0 or epoch == epochs:
            save_checkpoint(rundir, model, optimizer, progress, rng_states(device, train_loader, rng))
        bar.set_postfix(epoch=epoch, loss=f"{train['train_loss']:.3f}", top1=f"{progress.scores['top1']:.3f}")
    bar.close()
    return {**{f"{k}_last": v for k, v in progress.scores.items()}, "top1_best": progress.best[0],
            "best_epoch": progress.best[1], "train_seconds": progress.seconds,
            "images_per_s": epochs * len(data.train_y) / progress.seconds, "resumed_from_epoch": resumed_from,
            "eval_split": getattr(data, "eval_split", "test")}, model


def import_teacher(config: dict, checkpoint: str, data, device: torch.device, rundir: RunDir) -> tuple[dict, nn.Module]:
    """A teacher given as a RepDistiller/mdistiller checkpoint: loaded strictly, evaluated, cached like a trained one."""
    model = build_model(config, data)
    load_teacher_checkpoint(model, checkpoint)
    scores = compute_metrics(*predict(model.to(device), data.eval_loader(500, device)))
    rundir.save_checkpoint({"model": model.state_dict()})
    return {**{f"{k}_last": v for k, v in scores.items()}, "top1_best": scores["top1"], "best_epoch": None,
            "train_seconds": 0.0, "eval_split": getattr(data, "eval_split", "test")}, model
