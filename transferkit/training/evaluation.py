"""The Trainer's passes without gradients: evaluation (loss and the task's metric) and prediction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .finite import check_finite_inputs, not_finite, warn_if_not_finite
from .loaders import Feed, refuse_dataset
from .progress import progress
from .worker_errors import plain_worker_errors

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["evaluate_batches", "predict_batches"]


@plain_worker_errors
@torch.no_grad()
def evaluate_batches(
    trainer: Trainer, feed: Feed, epoch: int | None = None, bar: Any = None
) -> dict[str, float]:
    """Sample-weighted mean loss and the task's metrics over ``feed``'s batches, summed over every rank.

    A task without a validation loss (detection: the model gives detections in eval mode) reports its
    metrics only. ``epoch`` (from 0) is the epoch of ``fit`` that is validated, for the messages; ``bar``
    is that epoch's `EpochProgress`, which counts the validation batches too (else a bar of its own).

    Raises:
        ValueError: A batch's inputs hold NaN or infinite values (`transferkit.training.finite`); a
            non-finite loss or metric from finite inputs is a warning instead (a diverged model).
    """
    model, device, has_loss, step = trainer.model, trainer.device, trainer.task.has_val_loss, trainer.stepper
    module = feed.module or model
    meter = trainer.task.meter(model.num_classes, device)
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    sums = torch.zeros(2, device=device, dtype=dtype)  # [loss * samples, samples]
    ones = torch.ones((), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    flags = []  # per batch, whether its loss or outputs are non-finite: read once, at the end
    context = f"epoch {epoch + 1}, " if epoch is not None else ""
    for index, batch in enumerate(progress(feed.batches, "eval", not trainer.show_progress, bar)):
        where = f"{context}evaluation batch {index + 1}"
        inputs, targets = feed.split(batch, trainer.task, where)
        feed.check(trainer.task, inputs, targets, model.num_classes, where)
        check_finite_inputs(inputs, where, feed.batches, index)
        inputs, targets = step.to_device(inputs, targets)
        with step.autocast():
            outputs = step.forward(module, inputs)
            loss = step.loss_fn(outputs, targets) if has_loss else ones * 0
        outputs = trainer.task.float_outputs(outputs)
        flags.append(not_finite(loss) | not_finite(outputs))
        sums += torch.stack([loss.to(dtype), ones]) * trainer.task.num_samples(targets)
        meter.update(outputs, targets)
    model.train(was_training)
    if trainer.world_size > 1:
        for tensor in (sums, *meter.state):
            dist.all_reduce(tensor)
    loss_sum, samples = sums.tolist()
    results = {**({"loss": loss_sum / samples} if has_loss else {}), **meter.compute()}
    if trainer.is_main:
        what = f"the validation at epoch {epoch + 1}" if epoch is not None else "evaluate()"
        warn_if_not_finite(results, flags, what)
    return results


@plain_worker_errors
@torch.no_grad()
def predict_batches(trainer: Trainer, loader: Iterable[Any]) -> Any:
    """The model's outputs for every batch of ``loader`` (inputs alone or ``(inputs, targets)``): a tensor,
    or for detection one dict of boxes, scores and labels per image (`transferkit.tasks.Task.collect`)."""
    refuse_dataset(loader, "predict")
    model = trainer.model
    was_training = model.training
    model.eval()
    outputs = []
    for step, batch in enumerate(progress(loader, "predict", not trainer.show_progress)):
        inputs = trainer.task.as_batch(batch[0] if isinstance(batch, (tuple, list)) else batch)
        trainer.task.check_inputs(inputs, f"predict batch {step + 1}")
        inputs = trainer.stepper.inputs_to_device(inputs)
        found = trainer.stepper.outputs(model, inputs)
        outputs.append(trainer.task.float_outputs(found, torch.device("cpu")))
    model.train(was_training)
    if not outputs:
        raise ValueError("predict() got an empty loader; pass a loader with at least one batch")
    return trainer.task.collect(outputs)
