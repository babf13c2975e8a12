"""Optimizers by name, with weight decay only on the weights it regularizes.

Norm-layer scales and shifts and all biases (every parameter with ``ndim <= 1``) get no weight decay:
they set a layer's scale and offset rather than its capacity, and decaying a BatchNorm scale only shrinks
what the next BatchNorm renormalizes. Conv and linear weights get the given decay.

The fast-training recipes (Page's "How to train your ResNet", airbench) go further for BatchNorm: scales fixed
at 1 and shifts at a much higher LR than the weights. :func:`fix_norm_scales` and ``bias_lr_scale`` express both.

:func:`debiased_ema_update` is the weight average ``--ema`` keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")


def param_groups(model: nn.Module, weight_decay: float, bias_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Two param groups of the trainable parameters: those with ``ndim > 1`` at ``weight_decay``, the rest at 0
    and with ``lr_scale`` ``bias_lr_scale`` (the optimizer's lr times it; the first group's ``lr_scale`` is 1).

    Every parameter appears once (``parameters()`` drops shared ones); an empty group is left out.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}")
    if not bias_lr_scale > 0:
        raise ValueError(f"bias_lr_scale must be > 0; got {bias_lr_scale!r}")
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones (a whitening stem) never step
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": bias_lr_scale},
    ]
    return [group for group in groups if group["params"]]


def fix_norm_scales(model: nn.Module) -> int:
    """Freeze every BatchNorm scale (``weight``) at its value, 1 in a new net, so that no optimizer steps it; the
    number of scales frozen. A frozen scale stays in the state dict, so checkpoints and exports are unchanged."""
    frozen = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            module.weight.requires_grad_(False)
            frozen += 1
    return frozen


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                    bias_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Optimizer ``name`` (one of :data:`OPTIMIZERS`) over :func:`param_groups`.

    ``momentum`` and ``nesterov`` apply to sgd, ``betas`` to adamw. ``lr`` is also the peak of any schedule
    (see :mod:`cifar.schedulers`), which may cycle momentum or beta1 as well; the parameters without weight
    decay get ``lr * bias_lr_scale``, and a schedule scales both groups alike.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0; got {lr!r}")
    groups = param_groups(model, weight_decay, bias_lr_scale)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if name == "sgd":
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError(f"nesterov needs momentum > 0; got momentum {momentum!r}")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
        raise ValueError(f"betas must be two values in [0, 1); got {betas!r}")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


EmaUpdate = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]


def debiased_ema_update(decay: float) -> EmaUpdate:
    """``torch.optim.swa_utils.AveragedModel``'s ``multi_avg_fn`` for an exponential moving average of the weights
    over the steps it has seen: after ``n`` updates, step ``i``'s weights count ``decay ** (n - i)``, normalised by
    the sum of those (Adam's bias correction of a moving average started at zero).

    torch's ``get_ema_multi_avg_fn`` starts the average at the first step's weights and keeps ``decay ** n`` of
    them: at 0.999, 70% after the 352 steps of one epoch of 45,000 images at batch 128, and an average that
    close to an untrained net classifies at chance for the first epochs of a run. Both agree once ``decay ** n``
    is small. The update is ``averaged += (current - averaged) * (1 - decay) / (1 - decay ** (n + 1))`` with ``n``
    the updates so far (``AveragedModel`` copies the first step's weights itself); ``n`` stays a tensor on the
    weights' device, so the update needs no host sync.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1); got {decay!r}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = (1.0 - decay) / (1.0 - decay ** (updates.to(torch.float64) + 1))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight.to(averaged[0].dtype))
        else:  # BatchNorm's batch counters: lerp takes floats only
            for average, now in zip(averaged, current, strict=True):
                average.copy_(average + (now - average) * weight)

    return update
