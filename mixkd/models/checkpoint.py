"""Load RepDistiller / mdistiller teacher checkpoints into zoo models.

Those repositories save `{"model": state_dict, "epoch": ..., ...}`; DataParallel training adds a
`module.` prefix to every key. Loading is strict: a teacher that silently kept random weights would
poison every distillation result built on it, so any mismatch is an error that says what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import MixkdError

_PREFIX = "module."


def load_teacher_checkpoint(model: nn.Module, path: str | Path) -> None:
    model.load_state_dict(teacher_state(model, path), strict=True)


def teacher_state(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, once checked to load strictly into `model` (which may be on the meta
    device: a study checks its checkpoint teachers when it is read)."""
    path = Path(path)
    if not path.is_file():
        raise MixkdError(f"teacher checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; any of them means "unreadable"
        raise MixkdError(f"{path}: cannot read teacher checkpoint: {unreadable_reason(e)}") from None
    state = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MixkdError(f"{path}: not a state dict, nor a dict with the state dict under 'model'")
    state = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    problems = _mismatch_summary(model, state)
    if problems:
        raise MixkdError(f"{path}: checkpoint does not fit {type(model).__name__}: {problems}")
    return state


def unreadable_reason(e: Exception) -> str:
    """One line from a torch.load failure; a weights_only refusal names the offending global deep inside
    a paragraph of advice, so that sentence is the one kept."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cause = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
    return f"{type(e).__name__}: {cause.split('. ')[0]}"


def _mismatch_summary(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """'' when `state` loads strictly into `model`, else a one-line account of the differences."""
    expected = model.state_dict()
    # BatchNorm fills a missing `num_batches_tracked` itself (checkpoints from PyTorch < 0.4.1 lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if shapes:
        k, got, want = shapes[0]
        first = "first: " if len(shapes) > 1 else ""
        parts.append(f"{len(shapes)} shape mismatch{'es' * (len(shapes) > 1)} "
                     f"({first}{k}: checkpoint {got} vs model {want})")
    return ", ".join(parts)
