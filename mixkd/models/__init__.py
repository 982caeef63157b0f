"""Model registry: `create_model(name, num_classes=..., in_chans=..., img_size=...)`, like timm.

Factories take (num_classes, in_chans, img_size, **kwargs) and return a `StagedNet`. Names starting
with ``timm/`` are built by timm itself (see `timm_models`).
"""

from __future__ import annotations

import inspect
import typing

import torch

from ..errors import ConfigError
from ..registry import Registry
from ..schema import coerce
from .base import Features, StagedNet, count_parameters

MODELS: Registry = Registry("model")

TIMM_PREFIX = "timm/"
SHAPE_ARGS = ("num_classes", "in_chans", "img_size")  # create_model passes these to every factory


def create_model(name: str, num_classes: int, in_chans: int = 3, img_size: int = 32, **kwargs) -> StagedNet:
    if name.startswith(TIMM_PREFIX):
        from .timm_models import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX):], num_classes=num_classes, in_chans=in_chans,
                                 img_size=img_size, **kwargs)
    factory, params = MODELS.get(name, "model"), zoo_params(name)
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"{name} takes no argument {unknown[0]!r}; it takes: {', '.join(params) or 'none'}")
    return factory(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


def zoo_params(name: str) -> dict[str, inspect.Parameter]:
    """A registered model's own arguments (after the shape every factory receives)."""
    return {k: p for k, p in inspect.signature(MODELS.get(name)).parameters.items()
            if k not in SHAPE_ARGS and k != "_" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def check_model_args(name: str, args: dict, where: str, shape: tuple[int, int, int]) -> dict:
    """`args` as model `name` takes them, checked when a study is read rather than when its run starts.

    A zoo model's by name and annotated type first (numbers coerced like the rest of a study: YAML reads
    5e-4 as a string); then any model's, ranges and timm's own arguments included, by building it on the
    meta device: no memory, no weights, a fraction of a second.
    """
    timm_model = name.startswith(TIMM_PREFIX)
    if not timm_model:
        params, hints = zoo_params(name), typing.get_type_hints(MODELS.get(name))
        for key in args:
            if key not in params:
                allowed = ", ".join(params) or "none"
                raise ConfigError(f"{where}.{key}", f"unknown argument of {name}; allowed: {allowed}")
        args = {k: coerce(v, hints.get(k, typing.Any), f"{where}.{k}") for k, v in args.items()}
    try:
        meta_model(name, args, shape)
    except Exception as e:  # noqa: BLE001 - whatever the model raises, it is about these arguments
        raise ConfigError(where, f"{name} rejects them: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return args


def meta_model(name: str, args: dict, shape: tuple[int, int, int]) -> StagedNet:
    """Model `name` built on PyTorch's meta device (no memory, no weights): what a study is checked against."""
    with torch.device("meta"):
        return create_model(name, *shape, **({**args, "pretrained": False} if name.startswith(TIMM_PREFIX) else args))


def list_models(pattern: str | None = None) -> list[str]:
    return MODELS.names(pattern)


def is_known_model(name: str) -> bool:
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(name[len(TIMM_PREFIX):])
    return name in MODELS


def unknown_model_message(name: str) -> str:
    if name.startswith(TIMM_PREFIX):
        import difflib

        import timm

        close = difflib.get_close_matches(name[len(TIMM_PREFIX):], timm.list_models(), n=3, cutoff=0.6)
        return f"unknown timm model {name!r}" + (f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?"
                                                 if close else "; see timm.list_models()")
    return MODELS.unknown_message(name)


# Importing the zoo modules registers their models.
from . import cifar_resnet, mobilenetv2, resnet_v2, shufflenet, small_cnn, vgg, wrn  # noqa: E402,F401

__all__ = ["MODELS", "Features", "StagedNet", "check_model_args", "count_parameters", "create_model", "list_models",
           "is_known_model", "meta_model", "unknown_model_message", "zoo_params"]
