"""Horizontal fusion: students of one architecture in a lockstep group trained as one model.

A CIFAR student at batch 64 leaves a GPU mostly idle: its step is a long chain of tiny kernels. Fusing N
same-shaped models (HFTA, Wang et al., MLSys 2021) turns them into one model with N× wider kernels:
`torch.func.stack_module_state` stacks their weights, `vmap` over `functional_call` runs them as one
forward and backward (convolutions become grouped ones), and one SGD step on the stacked tensors applies
each member's own lr, momentum, weight decay and Nesterov flag. Each member keeps its own BatchNorm
statistics (stacked buffers), loss, temperature, view and records.

Fusion lasts one epoch: stacked from the members' models and optimizer states when the epoch starts, written
back when it ends, so evaluation, checkpoints (the unfused format), resume and failures are a member's as
without fusion; a member whose loss became non-finite fails at the epoch's end and is not fused again (its
weights are its own, so its NaNs never reach the others').
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .config import SGD
from .mixing import WITHOUT_RELABEL, Mixer
from .mixing.base import on_device


def stochastic(model: nn.Module) -> bool:
    """Whether `model` draws random numbers in training (dropout, drop-path): a fused forward would draw them
    from one stream for all members, not each member's own, so such models train unfused."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if type(module).__name__ == "DropPath" and getattr(module, "drop_prob", 0) > 0:
            return True
    return False


def fuse_key(member, plain_mix: bool) -> str | None:
    """Members with equal keys can be fused (None: this one cannot): the same architecture and arguments, a
    plain student forward (no feature method, no pre-training stage, no compiled wrapper, nothing random, and
    in a mixed view a mix that is just its images: `plain_mix`), and an optimizer step the fused one is: SGD,
    without gradient clipping or an EMA of the weights."""
    if not member.fusable or member.parts is not None or member.distiller.student is not member.model \
            or stochastic(member.model) or member.recipe.optimizer != SGD or member.recipe.clip_grad is not None \
            or member.ema is not None:
        return None
    if member.run.view.student_mixed and not plain_mix:
        return None
    return json.dumps([member.run.model, member.run.model_args.thaw()], sort_keys=True, default=str)


def plain_mixer(mixer: Mixer) -> bool:
    """Whether a student in a mixed view just forwards the mixed images (not manifold mixup's hidden-state mix,
    nor a variant that relabels from the student's forward, like TransMix): only then can its forward be
    fused. Relabelling mixers are those `WITHOUT_RELABEL` names (one draw could miss it: `mixup_transmix`'s
    mixup batches relabel nothing); a hidden-state mix is read off one draw on a dummy batch."""
    if mixer.name in WITHOUT_RELABEL:
        return False
    x, y = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    return mixer.fn(x, y, np.random.default_rng(0), **mixer.params).stage is None


class FusedStudents:
    """The members' models stacked into one (`forward`) and their SGD steps as one (`step`)."""

    def __init__(self, members: list):
        self.members = members
        models = [m.model for m in members]
        params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture; the weights are `params`
        shape = (len(members),)
        device = next(iter(self.params.values())).device

        def per_member(values) -> Tensor:
            return torch.tensor(values, dtype=torch.float64, device=device).view(shape)

        recipes = [m.recipe for m in members]
        self.momentum = per_member([r.momentum for r in recipes])
        self.weight_decay = per_member([r.weight_decay for r in recipes])
        self.nesterov = per_member([float(r.nesterov) for r in recipes]).bool()
        self.velocity = {k: torch.stack([_momentum_buffer(m, k, p) for m in members])
                         for k, p in self.params.items()}
        self.steps = 0  # taken: before the first, the members' own models still hold their state

    def forward(self, inputs: list[Tensor]) -> Tensor:
        """(N, B, K) logits of member i on `inputs[i]` (one shared tensor is broadcast, not copied)."""
        shared = all(x is inputs[0] for x in inputs)
        x = inputs[0] if shared else torch.stack(inputs)

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        return vmap(one, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    @torch.no_grad()
    def step(self, lrs: list[float]) -> None:
        """torch.optim.SGD's update (dampening 0) on every member at once, with its hyperparameters. The step's
        lrs reach the device in one non-blocking copy: a copy per tensor from pageable memory would make the
        host wait for the GPU's queue every step."""
        like = next(iter(self.params.values()))
        step_lrs = on_device(np.asarray(lrs, dtype=np.float64), like)
        for key, p in self.params.items():
            grad = p.grad
            expand = (-1,) + (1,) * (p.dim() - 1)
            lr, mom = step_lrs.view(expand).to(p.dtype), self.momentum.view(expand)
            d = grad + self.weight_decay.view(expand).to(p.dtype) * p
            v = self.velocity[key]
            v.mul_(mom.to(v.dtype)).add_(d)
            d = torch.where(self.nesterov.view(expand), d + mom.to(d.dtype) * v, v)
            p.sub_(lr * d)
            p.grad = None
        self.steps += 1

    @torch.no_grad()
    def unfuse(self) -> None:
        """Write each member's weights, BatchNorm statistics and momentum back into its model and optimizer."""
        for i, m in enumerate(self.members):
            named = dict(m.model.named_parameters())
            for key, p in self.params.items():
                named[key].copy_(p[i])
                if m.recipe.momentum != 0:
                    m.optimizer.state[named[key]]["momentum_buffer"] = self.velocity[key][i].clone()
            for key, b in dict(m.model.named_buffers()).items():
                b.copy_(self.buffers[key][i])


def _momentum_buffer(member, key: str, like: Tensor) -> Tensor:
    """A member's SGD momentum for parameter `key`: zeros before its first step (as SGD's first step, which
    starts the buffer at the gradient, amounts to)."""
    p = dict(member.model.named_parameters())[key]
    buf = member.optimizer.state.get(p, {}).get("momentum_buffer")
    return torch.zeros_like(like[0]) if buf is None else buf.detach().clone()


def fuse(members: list, mixer: Mixer) -> tuple[list[FusedStudents], list]:
    """`members` as fused blocks (two or more with one `fuse_key`) and the rest, to step one by one."""
    plain = plain_mixer(mixer)
    by_key: dict[str, list] = {}
    alone = []
    for m in members:
        key = fuse_key(m, plain)
        (by_key.setdefault(key, []) if key is not None else alone).append(m)
    blocks = [FusedStudents(ms) for ms in by_key.values() if len(ms) > 1]
    alone += [ms[0] for ms in by_key.values() if len(ms) == 1]
    return blocks, alone
