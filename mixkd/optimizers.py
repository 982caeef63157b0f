"""Optimizers a recipe may name (`recipe.optimizer`): mixkd's SGD, the default, and timm's for DeiT-style recipes.

`sgd` is torch's SGD with the recipe's momentum and Nesterov flag and weight decay on every parameter, as
RepDistiller and MIX-KD train; it takes the engine's fused/foreach kernel and fused lockstep training. The
others come from timm's optimizer factory (`create_optimizer_v2`) with its parameter groups: no weight decay
on norms, biases and what the model lists in `no_weight_decay()` (a ViT's position embedding and class token),
as DeiT and TransMix train. Their hyperparameters are parameters here, so a run's config names every one.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import SGD, Recipe
from .registry import Registry

# an optimizer: (model, extra, lr, recipe, engine, **hyperparameters) → a torch optimizer over the model's
# parameters and `extra` (a distillation method's trainable parts, weight-decayed)
OPTIMIZERS: Registry = Registry("optimizer", inputs=("model", "extra", "lr", "recipe", "engine"))


@OPTIMIZERS.register()
def sgd(model: nn.Module, extra: list, lr: float, recipe: Recipe, engine) -> torch.optim.Optimizer:
    """SGD with the recipe's momentum and nesterov, weight decay on every parameter (RepDistiller, MIX-KD)."""
    return engine.sgd([*model.parameters(), *extra], recipe, lr)


def _timm(opt: str, model: nn.Module, extra: list, lr: float, recipe: Recipe, **hyper) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay=recipe.weight_decay, no_weight_decay_list=skip)
    if extra:
        groups.append({"params": list(extra), "weight_decay": recipe.weight_decay})
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=recipe.weight_decay, **hyper)


@OPTIMIZERS.register()
def adamw(model, extra, lr, recipe, engine, betas: list[float] = (0.9, 0.999), eps: float = 1e-8):
    """AdamW, decoupled weight decay (DeiT and TransMix: lr 5e-4 × batch/512, weight decay 0.05)."""
    return _timm("adamw", model, extra, lr, recipe, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register()
def adam(model, extra, lr, recipe, engine, betas: list[float] = (0.9, 0.999), eps: float = 1e-8):
    """Adam, weight decay as an L2 term in the gradient."""
    return _timm("adam", model, extra, lr, recipe, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register()
def lamb(model, extra, lr, recipe, engine, betas: list[float] = (0.9, 0.999), eps: float = 1e-6):
    """LAMB, layer-wise trust ratio for large batches (timm's ResNet strikes back recipes)."""
    return _timm("lamb", model, extra, lr, recipe, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register()
def lion(model, extra, lr, recipe, engine, betas: list[float] = (0.9, 0.99)):
    """Lion, sign updates (Chen et al. 2023: lr 3–10× smaller, weight decay 3–10× larger than AdamW's)."""
    return _timm("lion", model, extra, lr, recipe, betas=tuple(betas))


@OPTIMIZERS.register()
def rmsproptf(model, extra, lr, recipe, engine, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9):
    """RMSprop as TensorFlow computes it (EfficientNet, MobileNet recipes)."""
    return _timm("rmsproptf", model, extra, lr, recipe, alpha=alpha, eps=eps, momentum=momentum)


@OPTIMIZERS.register()
def lars(model, extra, lr, recipe, engine, momentum: float = 0.9, trust_coeff: float = 0.001):
    """LARS, layer-wise adaptive rate scaling for large-batch SGD."""
    return _timm("lars", model, extra, lr, recipe, momentum=momentum, trust_coeff=trust_coeff)


def try_optimizer(recipe: Recipe) -> None:
    """Build the recipe's optimizer over a dummy layer and step it once, so that hyperparameters it cannot take
    fail when the study is read (mixkd's SGD takes none of its own)."""
    if recipe.optimizer == SGD:
        return
    layer = nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().backward()
    build_optimizer(layer, [], recipe, None).step()


def build_optimizer(model: nn.Module, extra: list, recipe: Recipe, engine) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model`'s parameters and `extra`."""
    spec = recipe.optimizer
    return OPTIMIZERS.get(spec.name)(model, extra, recipe.lr, recipe, engine, **spec.kwargs())
