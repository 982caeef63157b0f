"""timm models as StagedNets: `create_model("timm/<name>", ...)`.

`TimmNet` is a second view onto the timm module rather than a container around it: it adopts the
timm model's parameter, buffer and submodule dicts (the very same dict objects). Its state_dict keys
are therefore timm's own, so timm checkpoints load strictly and ours load into plain timm, and
`.to()`, `load_state_dict(assign=True)` or a submodule set through either object act on both.
Registering the timm model as a child would instead prefix every key with the attribute's name.
"""

from __future__ import annotations

import difflib
import inspect

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import MixkdError
from .base import StagedNet

_SHARED = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")


class _ForwardFeatures(nn.Module):
    """The whole of a CNN's `forward_features` as one stage (timm has no generic per-stage split)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.fn = model.forward_features  # a bound method, not a submodule: adds no state_dict keys

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class TimmNet(StagedNet):
    """A timm model split as stem → stages → pool → head, with logits equal to timm's forward.

    ViTs (timm `VisionTransformer`): stem = patch_embed, _pos_embed, patch_drop, norm_pre (as in
    timm's forward_features); one stage per block; pool = final norm + forward_head(pre_logits=True);
    classifier = head. Other models: forward_features is a single stage and the stem is the identity.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for attr in _SHARED:
            self.__dict__[attr] = model.__dict__[attr]
        object.__setattr__(self, "timm_model", model)  # unregistered: registering would prefix every key
        self.is_vit = isinstance(model, VisionTransformer)
        if not self.is_vit:
            object.__setattr__(self, "_features", [_ForwardFeatures(model)])

    def train(self, mode: bool = True):
        self.timm_model.training = mode  # timm's top-level code reads its own flag (e.g. F.dropout in heads)
        return super().train(mode)

    def stem(self, x: Tensor) -> Tensor:
        if not self.is_vit:
            return x
        m = self.timm_model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def stages(self):
        return self.blocks if self.is_vit else self._features

    def pool(self, h: Tensor) -> Tensor:
        m = self.timm_model
        return m.forward_head(m.norm(h) if self.is_vit else h, pre_logits=True)

    def head(self, features: Tensor) -> Tensor:
        return self.timm_model.get_classifier()(features)


def create_timm_model(name: str, num_classes: int, in_chans: int = 3, img_size: int = 32,
                      pretrained: bool = False, **kwargs) -> TimmNet:
    """`timm.create_model(name, ...)` wrapped as a TimmNet; kwargs go to timm (e.g. patch_size=4, depth=6).

    img_size is passed only to models timm marks `fixed_input_size` (ViTs and the like); CNNs take any size.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise MixkdError(f"unknown timm model {name!r}; {hint}(timm.list_models() lists them all)")
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except OSError as e:  # the Hub's and urllib's network and cache-miss errors are all OSErrors
        if not pretrained:
            raise
        raise MixkdError(f"timm/{name}: pretrained weights could not be downloaded ({type(e).__name__}); "
                         "set pretrained: false, or pre-populate the Hugging Face cache (HF_HOME) "
                         "on a machine with internet access") from e
    head = getattr(model, "forward_head", None)
    if head is None or "pre_logits" not in inspect.signature(head).parameters or \
            not isinstance(model.get_classifier(), nn.Module):
        raise MixkdError(f"timm/{name}: its head is not one classifier on pooled features "
                         "(e.g. a distilled DeiT's two heads); use a variant with a single head")
    return TimmNet(model)
