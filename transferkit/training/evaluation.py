"""The Trainer's passes without gradients: evaluation (loss and the task's metric) and prediction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from .feature_cache import CachedBatch
from .loaders import progress

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["evaluate_batches", "predict_batches"]


@torch.no_grad()
def evaluate_batches(trainer: Trainer, loader: Iterable[Any]) -> dict[str, float]:
    """Sample-weighted mean loss and the task's metrics over ``loader``, summed over every rank."""
    model, device = trainer.model, trainer.device
    meter = trainer.task.meter(model.num_classes, device)
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    sums = torch.zeros(2, device=device, dtype=dtype)  # [loss * samples, samples]
    ones = torch.ones((), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    for step, (inputs, targets) in enumerate(progress(loader, "eval", not trainer.show_progress)):
        if not isinstance(inputs, CachedBatch):
            trainer._check_targets(targets, f"evaluation batch {step}")
        inputs, targets = trainer._to_device(inputs, targets)
        with trainer._autocast():
            outputs = trainer._forward(model, inputs)
            loss = trainer.loss_fn(outputs, targets)
        sums += torch.stack([loss.to(dtype), ones]) * trainer.task.num_samples(targets)
        meter.update(outputs.float(), targets)
    model.train(was_training)
    if trainer.world_size > 1:
        for tensor in (sums, *meter.state):
            dist.all_reduce(tensor)
    loss_sum, samples = sums.tolist()
    return {"loss": loss_sum / samples, **meter.compute()}


@torch.no_grad()
def predict_batches(trainer: Trainer, loader: Iterable[Any]) -> Tensor:
    """The model's outputs for every batch of ``loader`` (inputs alone or ``(inputs, targets)``)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    outputs = []
    for batch in progress(loader, "predict", not trainer.show_progress):
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        inputs = inputs.to(trainer.device, non_blocking=True, memory_format=trainer.memory_format)
        with trainer._autocast():
            outputs.append(trainer._forward(model, inputs).float().cpu())
    model.train(was_training)
    if not outputs:
        raise ValueError("predict() got an empty loader; pass a loader with at least one batch")
    return trainer.task.collect(outputs)
