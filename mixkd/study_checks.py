"""The checks that build what a study names, so that a bad value fails when the study is read, not hours into
a run: model arguments (by building each model on PyTorch's meta device), mixer and loss parameters (by using
them once), a checkpoint teacher against its architecture, a mix against the models it is applied to. Also
the warning for runs that would train what another run of the study trains.

Components raise what they raise (ValueError, TypeError, MixkdError) about their own parameters; each check
turns that into the study's one-line ConfigError naming the field.
"""

from __future__ import annotations

import json
import typing
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import NO_MIX, Component, Mix, RunConfig, RunSpec
from .data import DATASETS, FRACTIONS, MINIMUMS
from .errors import ConfigError, MixkdError, StudyWarning
from .losses import LOSSES, FeatureLoss, probe
from .mixing import MIXERS, MODEL_NEEDS, WITHOUT_RELABEL
from .models import MODELS, TIMM_PREFIX, meta_model
from .models.checkpoint import teacher_state
from .schema import coerce


def check_model_args(name: str, args: dict, where: str, shape: tuple[int, int, int]) -> dict:
    """`args` as model `name` takes them.

    A zoo model's by name and annotated type first (numbers coerced like the rest of a study: YAML reads
    5e-4 as a string); then any model's, ranges and timm's own arguments included, by building it on the
    meta device: no memory, no weights, a fraction of a second.
    """
    if not name.startswith(TIMM_PREFIX):
        params, hints = MODELS.params(name), typing.get_type_hints(MODELS.get(name))
        for key in args:
            if key not in params:
                allowed = ", ".join(params) or "none"
                raise ConfigError(f"{where}.{key}", f"unknown argument of {name}; allowed: {allowed}")
        args = {k: coerce(v, hints.get(k, typing.Any), f"{where}.{k}") for k, v in args.items()}
    try:
        meta_model(name, args, shape)
    except Exception as e:  # noqa: BLE001 - whatever the model raises, it is about these arguments
        reason = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise ConfigError(where, f"{name} rejects them: {reason}") from None
    return args


def training_images(spec: dict, path: str) -> int | None:
    """How many images a resolved dataset spec trains on, once its sizes are checked against what the data
    holds (`val_size` held out of the training split, `train_size` drawn from the rest); None where its
    factory does not say how many it holds."""
    for key, low in MINIMUMS.items():
        if spec.get(key) is not None and spec[key] < low:
            raise ConfigError(f"{path}.{key}", f"must be ≥ {low}, got {spec[key]!r}")
    for key in FRACTIONS:
        if spec.get(key) is not None and not 0 < spec[key] <= 1:
            raise ConfigError(f"{path}.{key}", f"must be in (0, 1], got {spec[key]!r}")
    held = getattr(DATASETS.get(spec["name"]), "train_images", None)
    if held is None:
        return None
    total, val, size = held(spec) if callable(held) else held, spec.get("val_size", 0), spec.get("train_size")
    if val >= total:
        raise ConfigError(f"{path}.val_size", f"must be less than the {total} training images of "
                                              f"{spec['name']}, got {val}")
    if size is not None and size > total - val:
        left = f" left after val_size {val}" if val else ""
        raise ConfigError(f"{path}.train_size", f"must be at most the {total - val} training images{left}, "
                                                f"got {size}")
    return total - val if size is None else size


def try_mixer(mix: Mix, path: str) -> None:
    """Mix a dummy batch once, so parameters the mixer cannot use fail when the study is read (their ranges
    are the mixer's own business, as a model's arguments are the model's)."""
    try:
        x, y = torch.zeros(8, 3, 8, 8), torch.arange(8)
        MIXERS.get(mix.name)(x, y, np.random.default_rng(0), **mix.kwargs())
    except Exception as e:  # noqa: BLE001 - whatever the mixer raises, it is about these parameters
        raise ConfigError(path, f"mixer {mix.name!r} rejects its parameters: {type(e).__name__}: {e}") \
            from None


def try_loss(loss: Component, path: str) -> None:
    """Build the loss: its parameters' ranges are its own business. A ValueError naming a parameter ("beta
    must be ≥ 0, ...") points at that parameter's field."""
    try:
        LOSSES.get(loss.name)(**loss.kwargs())
    except ValueError as e:
        name = str(e).split(" ", 1)[0]
        field = f"{path}.{name}" if name in loss.kwargs() else path
        raise ConfigError(field, f"loss {loss.name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - whatever it raises, it is about these parameters
        raise ConfigError(path, f"loss {loss.name!r} rejects its parameters: {type(e).__name__}: {e}") \
            from None


def check_fits(model: str, args: dict, path: Path, dataset: Component, shape: tuple[int, int, int],
               field_path: str) -> None:
    """Load a checkpoint teacher into its architecture, built on the meta device, where the dataset declares
    its shape (the run loads it again with the data's)."""
    if hasattr(DATASETS.get(dataset.name), "shape"):
        try:
            teacher_state(meta_model(model, args, shape), path)
        except MixkdError as e:
            raise ConfigError(field_path, str(e)) from None


def check_mixes_fit(runs: list[RunSpec], teachers: dict, students: dict, shape: tuple[int, int, int]) -> None:
    """Fail on a mix that a model it is applied to cannot take (TransMix needs the student's class-token
    attention, manifold mixup the stages it mixes in front of). `teachers`, `students`: the study's specs."""
    models, checked = {}, set()
    for r in runs:
        mix = r.run.mix
        if mix.name not in MODEL_NEEDS:
            continue
        for where, name, relabels in _mixed_models(r):
            spec = (teachers if where == "teachers" else students)[name]
            model = (spec.model, json.dumps(spec.model_args, sort_keys=True))
            if (*model, mix, relabels) in checked:
                continue
            checked.add((*model, mix, relabels))
            if model not in models:
                models[model] = meta_model(spec.model, spec.model_args, shape)
            try:
                MODEL_NEEDS.get(mix.name)(models[model], relabels, **mix.kwargs())
            except (ValueError, MixkdError) as e:
                raise ConfigError(f"{where}.{name}.model",
                                  f"{spec.model} cannot take mix {mix.name!r}: {e}") from None


def check_methods_fit(runs: list[RunSpec], teachers: dict, students: dict, shape: tuple[int, int, int]) -> None:
    """Fail on a distillation method a run cannot use: a mixed view it is not defined for, features a model does
    not expose (pre-activations, maps), or shapes it cannot pair (FSP's equal channels, FitNet's hint layer) —
    checked on models built on the meta device, once per method, view and pair of architectures."""
    models, checked = {}, set()
    for r in runs:
        run = r.run
        cls = LOSSES.get(run.loss.name) if run.distill else None
        if cls is None or not issubclass(cls, FeatureLoss):
            continue
        if run.distill.mixed_view not in cls.views:
            raise ConfigError("grid.mixed_view", f"loss {run.loss.name!r} is defined for the views "
                                                 f"{', '.join(cls.views)}; {_name(r)} asks for "
                                                 f"{run.distill.mixed_view!r}")
        if cls.needs_index and run.recipe.devices > 1:
            raise ConfigError("grid.loss", f"loss {run.loss.name!r} keeps a memory of every image, which each "
                                           f"device would update for its shard alone; {_name(r)} trains on "
                                           f"{run.recipe.devices} devices: train it on one")
        pair = [(where, name, (teachers if where == "teachers" else students)[name])
                for where, name in (("students", r.names.name), ("teachers", r.names.teacher))]
        key = (run.loss, *[(spec.model, json.dumps(spec.model_args, sort_keys=True)) for _, _, spec in pair])
        if key in checked:
            continue
        checked.add(key)
        loss = LOSSES.get(run.loss.name)(**run.loss.kwargs())
        found = []
        for where, name, spec in pair:
            model = models.setdefault(key[1 if where == "students" else 2],
                                      meta_model(spec.model, spec.model_args, shape))
            try:
                found.append(probe(model, (shape[1], shape[2], shape[2]), loss.taps, "meta"))
            except NotImplementedError as e:
                raise ConfigError(f"{where}.{name}.model", f"loss {run.loss.name!r} needs what {spec.model} does "
                                                           f"not expose: {e}") from None
        try:
            loss.check(*found)
        except ValueError as e:
            raise ConfigError("grid.loss", f"loss {run.loss.name!r} cannot distil {pair[1][2].model} into "
                                           f"{pair[0][2].model}: {e}") from None


def _mixed_models(r: RunSpec) -> list[tuple[str, str, bool]]:
    """(teachers|students, name, relabels) of each model run `r` applies its mix to: the model it trains when
    that sees the mixed batch (the mix's labels may come from its forward), and a teacher that sees it."""
    run, view = r.run, r.run.view
    mixed = [("teachers" if run.is_teacher else "students", r.names.name, True)] if view.student_mixed else []
    return mixed + ([("teachers", r.names.teacher, False)] if run.distill and view.teacher_mixed else [])


def _computation(run: RunConfig) -> dict:
    """What a run computes, whatever it is called: a teacher trains as a scratch run does; a student whose
    loss reads no teacher (ce) is a scratch run, with the mix only if it sees the mixed batch; TransMix where
    the student sees clean images relabels nothing, so it is CutMix (`WITHOUT_RELABEL`)."""
    c = {**run.as_dict(), "role": None}
    if run.distill is None:
        return c
    if not LOSSES.get(run.loss.name).uses_teacher:
        return {**c, "distill": None, "mix": c["mix"] if run.view.student_mixed else NO_MIX.as_dict()}
    if run.mix.name in WITHOUT_RELABEL and not run.view.student_mixed:
        return {**c, "mix": {**c["mix"], "name": WITHOUT_RELABEL[run.mix.name]}}
    return c


def warn_of_repeats(runs: list[RunSpec], source: str) -> None:
    """Runs that compute exactly what another run of the study computes would train twice under two labels."""
    first: dict[str, RunSpec] = {}
    repeats = []
    for r in runs:
        key = json.dumps(_computation(r.run), sort_keys=True)
        if key in first:
            repeats.append(f"{_name(r)} = {_name(first[key])}")
        first.setdefault(key, r)
    if repeats:
        more = f" and {len(repeats) - 2} more" if len(repeats) > 2 else ""
        warnings.warn(f"{source}: {len(repeats)} run{'s' * (len(repeats) > 1)} would train what another run "
                      f"trains, so each such pair twice: {'; '.join(repeats[:2])}{more}", StudyWarning,
                      stacklevel=3)


def _name(r: RunSpec) -> str:
    run, d = r.run, r.run.distill
    where = f"{r.names.teacher}→" if d else ""
    details = f", T {d.temperature:g}, view {d.mixed_view}, loss {d.loss.name}" if d else ""
    return f"{run.role} {where}{r.names.name} (mix {run.mix.name}{details}, seed {run.seed})"
