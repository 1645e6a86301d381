"""Gradient accumulation over windows of batches, and the optimizer step that closes each window.

A window is ``grad_accum`` consecutive batches of an epoch (the epoch's last window may be shorter). Each
batch's loss is divided by the window's size, so the accumulated gradient is the mean over the window, and
one optimizer step closes it. A batch may be skipped (`transferkit.training.one_sample`): the window's
gradient is then rescaled to the mean over the batches that did train, and a window in which none trained
takes no step at all. The scheduler steps with the optimizer, so it (and the checkpoint that saves it)
counts real optimizer steps only, and a resumed run skips the same batches as an uninterrupted one.

Examples:
    >>> windows = AccumulationWindows(num_batches=5, grad_accum=2)  # windows: batches 0-1, 2-3, 4
    >>> [windows.size(step) for step in range(5)], [windows.closes(step) for step in range(5)]
    ([2, 2, 2, 2, 1], [False, True, False, True, True])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import Tensor, nn

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["AccumulationWindows", "close_window", "train_batch"]


class AccumulationWindows:
    """The accumulation windows of one epoch, and which of their batches were skipped.

    Args:
        num_batches: Batches in the epoch.
        grad_accum: Batches per optimizer step.
    """

    def __init__(self, num_batches: int, grad_accum: int) -> None:
        self.num_batches, self.grad_accum = num_batches, grad_accum
        self.skipped: list[int] = []  # steps skipped in the current window
        self.trained = 0  # batches of the epoch that trained

    def size(self, step: int) -> int:
        """Batches in the window of ``step`` (the divisor of each of its losses)."""
        return min(self.grad_accum, self.num_batches - (step - step % self.grad_accum))

    def closes(self, step: int) -> bool:
        """Whether ``step`` is the last batch of its window (where the optimizer steps)."""
        return step % self.grad_accum + 1 == self.size(step)

    def skip(self, step: int) -> None:
        """Records that the batch at ``step`` adds nothing to its window's gradient."""
        self.skipped.append(step)

    def train(self) -> None:
        """Records that a batch added its gradient."""
        self.trained += 1

    def close(self, step: int, params: Iterable[nn.Parameter], world_size: int = 1) -> bool:
        """At the window's last batch: whether to step, with the gradient made the mean over what trained.

        Under DDP the gradients are averaged over the processes in the backward pass of a window's last
        batch; when that batch was skipped (on every process alike: they see batches of equal sizes) they
        are averaged here instead.
        """
        size, skipped, self.skipped = self.size(step), self.skipped, []
        if len(skipped) == size:
            return False  # nothing trained: stepping would still apply momentum and weight decay
        if skipped:
            grads = [p.grad for p in params if p.grad is not None]
            factor = size / (size - len(skipped))
            if world_size > 1 and step in skipped:
                for grad in grads:
                    dist.all_reduce(grad)
                factor /= world_size
            for grad in grads:
                grad.mul_(factor)
        return True


def train_batch(
    trainer: Trainer, net: nn.Module, inputs: Any, targets: Any, windows: AccumulationWindows, step: int
) -> tuple[Tensor, Any]:
    """Forward, loss and backward of the batch at ``step``, its loss divided by its window's size.

    Returns:
        The detached loss and the outputs.
    """
    synced = trainer.world_size == 1 or windows.closes(step)  # DDP averages at a window's last batch
    with contextlib.nullcontext() if synced else net.no_sync():  # type: ignore[operator]
        with trainer._autocast():
            outputs = trainer._forward(net, inputs, targets)
            loss = trainer.loss_fn(outputs, targets)
        trainer.scaler.scale(loss / windows.size(step)).backward()
    windows.train()
    return loss.detach(), outputs


def close_window(trainer: Trainer, windows: AccumulationWindows, step: int) -> None:
    """Steps the optimizer where ``step`` ends a window in which a batch trained.

    Clips the gradients (``clip_grad_norm``), steps through the grad scaler, clears the gradients and steps
    the scheduler; see `AccumulationWindows.close` for the windows with skipped batches.
    """
    if not windows.closes(step) or not windows.close(step, trainer.model.parameters(), trainer.world_size):
        return
    if trainer.clip_grad_norm is not None:
        trainer.scaler.unscale_(trainer.optimizer)
        grads = [p for p in trainer.model.parameters() if p.grad is not None]
        nn.utils.clip_grad_norm_(grads, trainer.clip_grad_norm)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)  # frozen params keep grad None: AdamW skips them
    trainer.scheduler.step()
