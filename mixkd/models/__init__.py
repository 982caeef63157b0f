"""Model registry: `create_model(name, num_classes=..., in_chans=..., img_size=...)`, like timm.

Factories take (num_classes, in_chans, img_size, **kwargs) and return a `StagedNet`. Names starting
with ``timm/`` are built by timm itself (see `timm_models`).
"""

from __future__ import annotations

import difflib

import torch

from ..registry import Registry
from .base import Features, StagedNet, count_parameters

SHAPE_ARGS = ("num_classes", "in_chans", "img_size")  # create_model passes these to every factory
MODELS: Registry = Registry("model", inputs=SHAPE_ARGS)

TIMM_PREFIX = "timm/"


def create_model(name: str, num_classes: int, in_chans: int = 3, img_size: int = 32, **kwargs) -> StagedNet:
    if name.startswith(TIMM_PREFIX):
        from .timm_models import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX):], num_classes=num_classes, in_chans=in_chans,
                                 img_size=img_size, **kwargs)
    factory, params = MODELS.get(name, "model"), MODELS.params(name)
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise TypeError(f"{name} takes no argument {unknown[0]!r}; it takes: {', '.join(params) or 'none'}")
    return factory(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)


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
        import timm

        close = difflib.get_close_matches(name[len(TIMM_PREFIX):], timm.list_models(), n=3, cutoff=0.6)
        return f"unknown timm model {name!r}" + (f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?"
                                                 if close else "; see timm.list_models()")
    return MODELS.unknown_message(name)


# Importing the zoo modules registers their models.
from . import cifar_resnet, mobilenetv2, resnet_v2, shufflenet, small_cnn, vgg, wrn  # noqa: E402,F401

__all__ = ["MODELS", "TIMM_PREFIX", "Features", "StagedNet", "count_parameters", "create_model",
           "list_models", "is_known_model", "meta_model", "unknown_model_message"]
