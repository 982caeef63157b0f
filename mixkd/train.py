"""The training loop: one run, start to finish, in one readable function (nanoGPT-style).

Everything random derives from the run's seed through separate streams (model init, data order and
augmentation, mixing draws), so runs that differ only in student, temperature or loss see the same
batches and the same mixes: their differences are paired comparisons.
"""

from __future__ import annotations

import time
from collections import defaultdict

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


def train_run(config: dict, data, device: torch.device, rundir: RunDir, teacher: nn.Module | None = None,
              desc: str = "") -> tuple[dict, nn.Module]:
    """Train one resolved run config; log each epoch to `rundir`; return the final metrics and the model."""
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

    bar = tqdm(total=epochs * len(data.train_y), unit="img", unit_scale=True, desc=desc, leave=False,
               disable=None, dynamic_ncols=True)
    start, step, best = time.perf_counter(), 0, (-1.0, 0)
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        distiller.train()
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        seen = 0
        for x, y in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = recipe["lr"] * lr_factor(recipe["schedule"], step, steps, epochs, recipe["warmup_epochs"])
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
            step += 1
            bar.update(len(y))
        train = {f"train_{k}": v.item() / seen for k, v in sums.items()}
        if not np.isfinite(train["train_loss"]):
            raise NonFiniteLoss(f"training loss became {train['train_loss']} in epoch {epoch}")
        logits, labels = predict(model, eval_loader)
        scores = compute_metrics(logits, labels)
        if scores["top1"] > best[0]:
            best = (scores["top1"], epoch)
        rundir.log_epoch({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **train,
                          "test_top1": scores["top1"], "test_loss": scores["nll"],
                          "seconds": time.perf_counter() - epoch_start})
        bar.set_postfix(epoch=epoch, loss=f"{train['train_loss']:.3f}", top1=f"{scores['top1']:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    rundir.save_model(model)
    return {**{f"{k}_last": v for k, v in scores.items()}, "top1_best": best[0], "best_epoch": best[1],
            "train_seconds": seconds, "images_per_s": epochs * len(data.train_y) / seconds,
            "eval_split": getattr(data, "eval_split", "test")}, model


def import_teacher(config: dict, checkpoint: str, data, device: torch.device, rundir: RunDir) -> tuple[dict, nn.Module]:
    """A teacher given as a RepDistiller/mdistiller checkpoint: loaded strictly, evaluated, cached like a trained one."""
    model = build_model(config, data)
    load_teacher_checkpoint(model, checkpoint)
    scores = compute_metrics(*predict(model.to(device), data.eval_loader(500, device)))
    rundir.save_model(model)
    return {**{f"{k}_last": v for k, v in scores.items()}, "top1_best": scores["top1"], "best_epoch": None,
            "train_seconds": 0.0, "eval_split": getattr(data, "eval_split", "test")}, model
