"""The learning-rate range test: train briefly while the rate grows exponentially, then undo it all.

The loss falls slowly at rates too low to matter, falls fastest somewhere in the middle, and blows up
once the rate is too high. The suggestion is the lowest rate at which the loss has made nine tenths of
its fall, from the first rate to its lowest (the curve averaged over half a decade either side of
each rate): where training has become effective, short of the rates where the loss is lowest only
because the sweep has trained on the same images for longer, and well short of divergence. On the ten
real tasks of ``benchmarks/bench_recipes.py`` (6 seeds each) it landed within 2 points of the best
fine-tuning rate in 55 of 60 sweeps (48 since a sixth of the blocks fine-tunes on few images measured
near ImageNet: textures-5 then wants 3e-4 alone, and the suggestions sit just above it); on the same
curves of the first three seeds, a tenth of the lowest loss's rate (the common rule, which follows the
batch-to-batch noise of small training sets) did in at most 16 of 30, and the steepest fall in at most
8.

Every group of the Trainer's optimizer is scaled by the same factor, so ``layer_decay`` and
``backbone_lr_mult`` keep their ratios and the suggestion is a value for ``Trainer(lr=...)``: the
head's rate.

The sweep trains what the model's freeze state trains now (under a ``gradual`` schedule: its current
epoch's blocks), with the step ``fit`` takes (`transferkit.training.step.Step`): the same precision,
``grad_accum`` batches per optimizer step (their mean loss is the rate's), and ``clip_grad_norm``.
`Trainer.lr_find` first brings the model to where the rate it measures is used: under the default
recipe, the probe's head (trained, its logits softened) with the fine-tune phase's blocks trainable.
Afterwards the model's weights and buffers, its train/eval mode, the optimizer's state and rates, the
gradient scaler and the random number generators are exactly as before.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .loaders import check_length, split_batch, split_loaders
from .one_sample import OneSampleBatches, all_skipped_message
from .step import AccumulationWindows
from .worker_errors import plain_worker_errors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .trainer import Trainer

__all__ = ["LRFindResult", "lr_find"]

_SMOOTHING = 0.9  # weight of the running loss in the moving average that stops a diverging sweep
_WINDOW = 0.5  # decades of rate either side over which the suggestion's curve averages the loss
_FALL = 0.9  # the share of the loss's fall at which the suggestion is read


@dataclass
class LRFindResult:
    """What `lr_find` measured: the rates tried, the loss at each (averaged over `_WINDOW` decades either
    side), and the suggested rate."""

    suggestion: float
    lrs: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """Smoothed loss against learning rate (log scale), the suggestion marked; saved to ``path``.

        Raises:
            ImportError: matplotlib is not installed.
        """
        from ..viz.plots import new_figure, save_figure

        fig = new_figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses)
        ax.axvline(
            self.suggestion, color="tab:red", linestyle="--", label=f"suggestion {self.suggestion:.2g}"
        )
        ax.set(xscale="log", xlabel="learning rate (head)", ylabel="training loss (smoothed)")
        ax.legend()
        save_figure(fig, path)
        return fig


def _smooth(lrs: list[float], raw: list[float]) -> list[float]:
    """Each rate's loss averaged with the losses of the rates within `_WINDOW` decades of it (both sides:
    the curve does not lag behind the rate, whatever the number of steps per decade)."""
    logs = [math.log10(lr) for lr in lrs]
    return [
        sum(v for x, v in zip(logs, raw) if abs(x - centre) <= _WINDOW)
        / sum(abs(x - centre) <= _WINDOW for x in logs)
        for centre in logs
    ]


def _suggest(lrs: list[float], losses: list[float]) -> float:
    """The lowest rate at which the (smoothed) loss has made `_FALL` of its fall from the first rate to
    its lowest; the first rate when it never fell."""
    lowest = min(range(len(losses)), key=losses.__getitem__)
    fall = losses[0] - losses[lowest]
    return next(lr for lr, loss in zip(lrs, losses) if losses[0] - loss >= _FALL * fall)


@plain_worker_errors
def _check_sweep(start_lr: float, end_lr: float, steps: int) -> None:
    """Refuse a sweep that cannot run: rates out of order or not positive, fewer than 3 steps."""
    if not (
        isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr
    ):
        raise ValueError(f"lr_find needs 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3:
        raise ValueError(f"lr_find needs steps >= 3 (an int), got {steps!r}")


def lr_find(
    trainer: Trainer,
    loader: Any,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int = 100,
    diverge: float = 4.0,
    prepare: Callable[[], object] | None = None,
) -> LRFindResult:
    """Sweep the head's learning rate from ``start_lr`` to ``end_lr`` over ``steps`` training steps.

    Args:
        trainer: Its model, optimizer, loss, device and precision are used, then restored.
        loader: Training batches ``(inputs, targets)`` (or ``{"train": ...}`` / ``(train, val)``; only
            the training loader is used); it is cycled when shorter than ``steps``.
        start_lr: First rate.
        end_lr: Last rate.
        steps: Optimizer steps (rates, spaced evenly in log scale), each over ``grad_accum`` batches.
        diverge: Stop early once the loss (a moving average) exceeds this many times its lowest value.
        prepare: Called once the state is saved, before the sweep (`Trainer.lr_find` trains the recipe's
            probe there); undone with the rest.

    Returns:
        The rates tried, the losses (averaged over nearby rates) and the suggestion.

    Raises:
        ValueError: ``0 < start_lr < end_lr`` does not hold, ``steps < 3``, an empty loader, or a loader
            whose every batch holds one sample that BatchNorm cannot normalise (such batches are skipped).

    Examples:
        >>> result = Trainer(model, progress=False).lr_find(train_loader)
        >>> len(result.lrs) <= 100, 1e-6 <= result.suggestion <= 1.0
        (True, True)
    """
    _check_sweep(start_lr, end_lr, steps)
    train, _ = split_loaders(loader)
    check_length(train, "lr_find")
    model, optimizer = trainer.model, trainer.optimizer
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_scaler, was_training = copy.deepcopy(trainer.scaler.state_dict()), model.training
    devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            if prepare is not None:
                prepare()
            lrs, raw = _sweep(trainer, train, start_lr, end_lr, steps, diverge)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        trainer.scaler.load_state_dict(saved_scaler)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    losses = _smooth(lrs, raw)
    return LRFindResult(suggestion=_suggest(lrs, losses), lrs=lrs, losses=losses)


def _sweep(
    trainer: Trainer, loader: Any, start_lr: float, end_lr: float, steps: int, diverge: float
) -> tuple[list[float], list[float]]:
    model, optimizer, step = trainer.model, trainer.optimizer, trainer.stepper
    # the configured rates (the schedule may have lowered the current ones): the head's is the highest
    shares = [lr / max(trainer.base_lrs) for lr in trainer.base_lrs]
    lrs, losses, smoothed, average, accum = [], [], [], 0.0, step.grad_accum
    batches = _trainable_batches(trainer, loader)
    windows = AccumulationWindows(steps * accum, accum)
    model.train()
    for index in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (index / (steps - 1))
        for group, share in zip(optimizer.param_groups, shares):
            group["lr"] = lr * share
        window = [index * accum + i for i in range(accum)]
        value = sum(float(step.backward(model, *next(batches), windows, i)[0]) for i in window) / accum
        step.update(model.parameters(), windows, window[-1])
        if not math.isfinite(value):
            break
        average = _SMOOTHING * average + (1 - _SMOOTHING) * value
        smoothed.append(average / (1 - _SMOOTHING ** (index + 1)))  # without the bias towards 0
        lrs.append(lr)
        losses.append(value)
        if smoothed[-1] > diverge * min(smoothed):
            break
    if not losses:
        raise FloatingPointError(f"lr_find: the loss was not finite at the first rate {start_lr:g}")
    return lrs, losses


def _trainable_batches(trainer: Trainer, loader: Any) -> Iterator[tuple[Any, Any]]:
    """The loader's batches over and over, checked and on the device, without the batches of one sample
    that BatchNorm cannot normalise (`transferkit.training.one_sample`, which warns once).

    Raises:
        ValueError: A whole pass over ``loader`` found no batch to train on.
    """
    guard, drawn, skipped_in_a_row = OneSampleBatches(), 0, 0
    while True:
        for batch in loader:
            drawn += 1
            where = f"lr_find batch {drawn}"
            inputs, targets = split_batch(batch, trainer.task, where)
            trainer.task.check_batch(inputs, targets, trainer.model.num_classes, where)
            inputs, targets = trainer.stepper.to_device(inputs, targets)
            probe = functools.partial(trainer.stepper.forward, trainer.model, inputs)
            if not guard.skips(trainer.model, inputs, probe, where, loader):
                skipped_in_a_row = 0
                yield inputs, targets
                continue
            skipped_in_a_row += 1
            if skipped_in_a_row == len(loader):
                raise ValueError(all_skipped_message("every batch of the lr_find loader"))
