"""Training batches of one sample that BatchNorm, in training mode, cannot normalise.

BatchNorm in training mode normalises with the batch's own statistics, so it needs more than one value per
channel: a batch of one image passes while the feature maps are larger than 1x1, and fails at a layer
where they are 1x1 (a ResNet's last stage at 32 px, or any ``BatchNorm1d`` over pooled features). Such a
batch is usually the remainder of a dataset whose size is one more than a multiple of the batch size (12
images in batches of 11). `OneSampleBatches` finds, before the batch trains, whether it would fail: it runs
it once in eval mode without gradients (nothing changes: no statistics, no gradient, no random draw) and
looks at what reaches each BatchNorm that uses batch statistics. Such a batch is skipped, with one warning
per ``fit`` that says how to avoid it; a loader whose every batch holds one sample is an error instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["OneSampleBatches", "num_samples"]


def num_samples(inputs: Any) -> int:
    """Samples in a batch of inputs (a tensor ``[N, ...]``, or a cached batch of prefix outputs)."""
    return len(inputs)


class _OneValuePerChannel(Exception):
    """Raised by the probe's hook to stop the forward pass at the first norm layer that would fail."""


class OneSampleBatches:
    """Decides whether a training batch is skipped because a BatchNorm layer cannot normalise it.

    Create one per ``fit``: its warning is given once.

    Examples:
        >>> guard = OneSampleBatches()
        >>> guard.skips(model, inputs[:1], lambda: model(inputs[:1]), "epoch 1, batch 2", loader)
        True
    """

    def __init__(self) -> None:
        self.warned = False

    def skips(
        self,
        model: nn.Module,
        inputs: Any,
        forward: Callable[[], Any],
        where: str,
        loader: Any,
    ) -> bool:
        """Whether the batch at ``where`` holds one sample that a BatchNorm of ``model`` cannot normalise.

        Args:
            model: The model, in training mode.
            inputs: The batch's inputs.
            forward: Runs the model on ``inputs`` (called at most once, in eval mode, without gradients).
            where: The batch, for the messages (``"epoch 1, batch 2"``).
            loader: The training loader, for the advice in the messages.

        Raises:
            ValueError: Every batch of ``loader`` holds one sample (``batch_size=1``).
        """
        if num_samples(inputs) != 1:
            return False
        norms: dict[nn.Module, str] = {
            m: name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and _batch_statistics(m)
        }
        layer = _one_value_per_channel(model, norms, forward) if norms else None
        if layer is None:
            return False
        if getattr(loader, "batch_size", None) == 1:
            raise ValueError(all_skipped_message("every training batch"))
        if not self.warned:
            self.warned = True
            warnings.warn(_skip_message(where, layer, loader), UserWarning, stacklevel=2)
        return True


def _skip_message(where: str, layer: str, loader: Any) -> str:
    return (
        f"the training batch at {where} holds one sample{_remainder(loader)}, which the BatchNorm layer "
        f"{layer!r} cannot normalise in training mode: it would see one value per channel. That batch is "
        "skipped, in this and every later epoch where it recurs (the loss and the optimizer steps count the "
        "batches that trained). To train on every sample, choose a batch size that leaves no single sample "
        "over (with the CLI: another --batch-size); or pass drop_last=True to the training DataLoader to "
        "drop that sample on purpose."
    )


def all_skipped_message(what: str) -> str:
    """The error for an epoch in which no batch could train: ``what`` names the batches."""
    return (
        f"{what} holds one sample, which the model's BatchNorm layers in training mode cannot normalise "
        "(they need more than one value per channel), so nothing would train; use batch_size=2 or more, "
        "or keep the norm layers in eval mode: model.freeze(..., bn='frozen_all')"
    )


def _batch_statistics(norm: _BatchNorm) -> bool:
    """Whether ``norm`` normalises with the batch's statistics (as ``nn.BatchNorm2d.forward`` decides)."""
    return norm.training or (norm.running_mean is None and norm.running_var is None)


def _one_value_per_channel(
    model: nn.Module, norms: dict[nn.Module, str], forward: Callable[[], Any]
) -> str | None:
    """The name of the first of ``norms`` that ``forward`` feeds one value per channel, or None.

    ``forward`` runs in eval mode without gradients, so nothing changes (no statistics, no random draws);
    the modes of ``model``'s modules are restored afterwards.
    """

    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args[0].numel() == args[0].shape[1]:  # N * H * W == 1: what BatchNorm refuses
            raise _OneValuePerChannel(norms[module])

    modes = {module: module.training for module in model.modules()}
    hooks = [norm.register_forward_pre_hook(check) for norm in norms]
    model.eval()
    try:
        with torch.no_grad():
            forward()
    except _OneValuePerChannel as found:
        return str(found)
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    return None


def _remainder(loader: Any) -> str:
    """`` (12 samples in batches of 11 leave 1 over)`` when the loader says so, else nothing."""
    batch_size, dataset = getattr(loader, "batch_size", None), getattr(loader, "dataset", None)
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return ""
    if not isinstance(batch_size, int) or size % batch_size != 1:
        return ""
    return f" ({size} samples in batches of {batch_size} leave 1 over)"
