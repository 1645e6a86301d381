"""One batch as every pass runs it (`Step`), and gradient accumulation over windows of batches.

`Step` is shared by ``fit``, ``evaluate``, ``predict`` and ``lr_find``: device placement, precision
(autocast and the grad scaler), the forward pass, the loss, the backward pass and the update with
clipping. The module it calls is whatever the pass hands it (the model, its DDP wrapper, or the feature
cache's trainable part, `transferkit.training.loaders.Feed`); it never looks at what the inputs are.

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
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["AccumulationWindows", "Step"]


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


class Step:
    """Device placement, precision, forward, loss, backward and the clipped, accumulated update.

    Args:
        task: The model's task (`transferkit.tasks.Task`): how targets move and how the forward is called.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        optimizer: Stepped by `update`.
        scaler: The grad scaler (enabled for fp16 only).
        device: Where batches go.
        amp_dtype: The autocast dtype (``torch.float32``: no autocast).
        memory_format: Memory format of 4-d inputs on ``device``.
        grad_accum: Batches per optimizer step (see `AccumulationWindows`).
        clip_grad_norm: Maximum gradient norm, or None.
        world_size: Processes training together (DDP).

    Examples:
        >>> step = Step(task, loss_fn, optimizer, scaler, torch.device("cpu"), torch.float32)
        >>> windows = AccumulationWindows(num_batches=1, grad_accum=1)
        >>> inputs, targets = step.to_device(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
        >>> loss, logits = step.backward(model, inputs, targets, windows, 0)  # logits [4, 2]
        >>> step.update(model.parameters(), windows, 0)  # the window closed: the optimizer stepped
        True
    """

    def __init__(
        self,
        task: Any,
        loss_fn: Callable[[Any, Any], Tensor],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        device: torch.device,
        amp_dtype: torch.dtype,
        memory_format: torch.memory_format = torch.contiguous_format,
        *,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        world_size: int = 1,
    ) -> None:
        self.task, self.loss_fn, self.optimizer, self.scaler = task, loss_fn, optimizer, scaler
        self.device, self.amp_dtype, self.memory_format = device, amp_dtype, memory_format
        self.grad_accum, self.clip_grad_norm, self.world_size = grad_accum, clip_grad_norm, world_size

    def autocast(self) -> torch.autocast:
        """The autocast context of the precision (disabled for fp32)."""
        enabled = self.amp_dtype != torch.float32
        return torch.amp.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def inputs_to_device(self, inputs: Any) -> Any:
        """``inputs`` (a tensor ``[N, C, H, W]``, or anything with the same ``to``) on the device."""
        return inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def to_device(self, inputs: Any, targets: Any) -> tuple[Any, Any]:
        """The batch on the device: inputs in the memory format, targets as the task wants them."""
        return self.inputs_to_device(inputs), self.task.to_device(targets, self.device)

    def forward(self, module: nn.Module, inputs: Any, targets: Any = None) -> Any:
        """``module``'s outputs for ``inputs`` (the task decides how it is called), without autocast.

        Frozen parameters and inputs need no grad, so autograd records nothing until the first trainable
        block: a frozen prefix runs without a graph, exactly as under ``torch.no_grad()``.
        """
        return self.task.forward(module, inputs, targets)

    def outputs(self, module: nn.Module, inputs: Any) -> Any:
        """`forward` under autocast, for evaluation and prediction (call it under ``torch.no_grad()``)."""
        with self.autocast():
            return self.forward(module, inputs)

    def backward(
        self, net: nn.Module, inputs: Any, targets: Any, windows: AccumulationWindows, step: int
    ) -> tuple[Tensor, Any]:
        """Forward, loss and backward of the batch at ``step``, its loss divided by its window's size.

        Returns:
            The detached loss and the outputs.
        """
        no_sync = getattr(net, "no_sync", None)  # DDP averages the gradients at a window's last batch
        synced = self.world_size == 1 or windows.closes(step) or no_sync is None
        with contextlib.nullcontext() if synced else no_sync():  # type: ignore[misc]
            with self.autocast():
                outputs = self.forward(net, inputs, targets)
                loss = self.loss_fn(outputs, targets)
            self.scaler.scale(loss / windows.size(step)).backward()
        windows.train()
        return loss.detach(), outputs

    def update(self, params: Iterable[nn.Parameter], windows: AccumulationWindows, step: int) -> bool:
        """Steps the optimizer where ``step`` ends a window in which a batch trained; whether it did.

        Clips the gradients (``clip_grad_norm``), steps through the grad scaler and clears the gradients;
        see `AccumulationWindows.close` for the windows with skipped batches. The caller steps its
        scheduler when this returns True.
        """
        params = list(params)
        if not windows.closes(step) or not windows.close(step, params, self.world_size):
            return False
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)  # frozen params keep grad None: AdamW skips them
        return True
