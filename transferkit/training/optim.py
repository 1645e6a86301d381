"""Optimizers and learning-rate schedules from names, over `TransferModel.param_groups`.

The optimizer is built once over every group (frozen blocks included), so unfreezing never changes its
layout and checkpoints always resume; the schedules step once per optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .recipe import Phase, default_layer_decay

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "build_optimizer",
    "build_scheduler",
    "model_optimizer",
    "phase_rates",
    "start_schedule",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "onecycle", "none")


def build_optimizer(spec: Any, groups: list[dict[str, Any]], fused_on_cpu: bool) -> torch.optim.Optimizer:
    """``"adamw"``, ``"adam"``, ``"sgd"`` (momentum 0.9), or ``spec(groups)`` for a callable.

    Examples:
        >>> groups = model.param_groups(1e-3)
        >>> type(build_optimizer("adamw", groups, fused_on_cpu=False)).__name__
        'AdamW'
    """
    if callable(spec):
        return spec(groups)
    if spec not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; use one of {list(OPTIMIZERS)} or a callable")
    # On CUDA the fused kernels update all tensors of a group in one launch. On the CPU they make the step
    # itself 2-3x faster, but the per-parameter loop's temporary buffers keep the allocator's large blocks
    # in use between steps; without them, the activations and gradients of a network training end to end
    # land on fresh pages every step. Measured on 2 cores with resnet18: fine-tuning everything, the fused
    # step gave 40-60 % more page faults and 5-9 % longer epochs; with a frozen prefix (last_n, cached
    # features) the fused step is the faster one. So the CPU gets them only when part of the net is frozen.
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    usable = bool(params) and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    fused = True if usable and (devices == {"cuda"} or fused_on_cpu) else None  # None: torch's default
    if spec == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, fused=fused)
    return (torch.optim.AdamW if spec == "adamw" else torch.optim.Adam)(groups, fused=fused)


def model_optimizer(
    model: Any, spec: Any, lr: float, weight_decay: float, **scales: Any
) -> torch.optim.Optimizer:
    """`build_optimizer` over ``model.param_groups(lr, weight_decay, **scales)`` (``layer_decay``,
    ``backbone_lr_mult``), fused on the CPU where part of the model is frozen. A ``layer_decay`` of
    None is the model's default (`recipe.default_layer_decay`: 0.75 for a ViT)."""
    if scales.get("layer_decay") is None:
        scales["layer_decay"] = default_layer_decay(model)
    groups = model.param_groups(lr, weight_decay=weight_decay, **scales)
    partly_frozen = len(model.trainable_blocks) < len(model.blocks)
    return build_optimizer(spec, groups, fused_on_cpu=partly_frozen)


def build_scheduler(spec: Any, optimizer: torch.optim.Optimizer, base_lrs: list[float], total: int) -> Any:
    """A scheduler over ``total`` optimizer steps: ``"cosine"``, ``"step"``, ``"onecycle"``, ``"none"``.

    A callable ``spec`` is called as ``spec(optimizer, total)``.
    """
    if callable(spec):
        return spec(optimizer, total)
    if spec == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=base_lrs, total_steps=total)
    factors = {
        "cosine": lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
        "step": lambda s: 0.1 ** min(2, 3 * s // total),
        "none": lambda s: 1.0,
    }
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[spec])


def start_schedule(
    spec: Any, optimizer: torch.optim.Optimizer, base_lrs: list[float], total: int
) -> tuple[list[float], Any]:
    """Sets each param group's learning rate to ``base_lrs`` (where the schedule starts) and returns
    ``(base_lrs, scheduler)`` for ``total`` optimizer steps (`build_scheduler`)."""
    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = group["initial_lr"] = lr
    return base_lrs, build_scheduler(spec, optimizer, base_lrs, total)


def phase_rates(
    phase: Phase, given: list[float], optimizer: torch.optim.Optimizer, built: float
) -> list[float]:
    """Each param group's rate in ``phase``, from the rates ``given`` to an optimizer built at ``built``:
    the backbone's groups scaled to ``phase.lr``, the neck's and head's to ``phase.head_lr`` (or ``lr``).

    Examples:
        >>> phase_rates(Phase("finetune", 10, 3e-3, 6, head_lr=3e-4), [1e-3, 1e-3], optimizer, built=1e-3)
        [0.003, 0.0003]
    """
    head = phase.lr if phase.head_lr is None else phase.head_lr
    return [
        rate * ((phase.lr if str(group.get("name", "")).startswith("backbone.") else head) / built)
        for rate, group in zip(given, optimizer.param_groups, strict=True)
    ]
