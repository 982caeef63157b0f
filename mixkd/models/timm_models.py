"""timm models as StagedNets: `create_model("timm/<name>", ...)`.

`TimmNet` holds the timm model as its one child, `timm_model`, and keeps timm's checkpoint layout with
state-dict hooks, torch's public API for renaming keys: `state_dict()` leaves out the child's name (and so
matches plain timm's), and `load_state_dict` takes timm's keys (ours too, prefixed or not). So timm
checkpoints load strictly into a TimmNet and a TimmNet's into plain timm, and `.to()`, `train()`,
`deepcopy` and `load_state_dict(assign=True)` are torch's own.
"""

from __future__ import annotations

import difflib
import inspect

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import MixkdError
from .base import StagedNet

CHILD = "timm_model."  # the child's prefix in torch's own keys, which timm's layout leaves out


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
        self.timm_model = model
        self.is_vit = isinstance(model, VisionTransformer)
        if not self.is_vit:
            object.__setattr__(self, "_features", [_ForwardFeatures(model)])  # a list: no module, no keys
        self.register_state_dict_post_hook(_timm_keys)
        self.register_load_state_dict_pre_hook(_our_keys)
        self.register_load_state_dict_post_hook(_report_timm_keys)

    def stem(self, x: Tensor) -> Tensor:
        if not self.is_vit:
            return x
        m = self.timm_model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def stages(self):
        return self.timm_model.blocks if self.is_vit else self._features

    def pool(self, h: Tensor) -> Tensor:
        m = self.timm_model
        return m.forward_head(m.norm(h) if self.is_vit else h, pre_logits=True)

    def head(self, features: Tensor) -> Tensor:
        return self.timm_model.get_classifier()(features)


def _timm_keys(module: TimmNet, state: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: the child's keys and module versions without its name, as timm writes them."""
    ours = prefix + CHILD
    for key in [k for k in state if k.startswith(ours)]:
        state[prefix + key[len(ours):]] = state.pop(key)
    versions = getattr(state, "_metadata", {})  # module path → {"version": ...}; the child's is ours[:-1]
    for key in [k for k in versions if k == ours[:-1] or k.startswith(ours)]:
        versions[(prefix + key[len(ours):]) if key != ours[:-1] else prefix[:-1]] = versions.pop(key)


def _our_keys(module: TimmNet, state: dict, prefix: str, local_metadata: dict, strict: bool, missing: list,
              unexpected: list, errors: list) -> None:
    """load_state_dict pre-hook: timm's keys under the child's name, where torch loads them from. (Module
    versions stay where they are: a missing one only lets BatchNorm fill a missing `num_batches_tracked`.)"""
    ours = prefix + CHILD
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(ours)]:
        state[ours + key[len(prefix):]] = state.pop(key)


def _report_timm_keys(module: TimmNet, incompatible) -> None:
    """load_state_dict post-hook: missing and unexpected keys named as in the state dict given (timm's)."""
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [k.replace(CHILD, "", 1) for k in keys]


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
