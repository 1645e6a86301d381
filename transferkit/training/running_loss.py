"""The training loss as the Trainer reports it: the bounded-rate host sync, and the parts of a loss dict.

`sync_losses` turns the losses of the last few steps into one host number (the mean over processes),
failing on a non-finite value. `LossParts` keeps running sums of the named parts a task reports
(`transferkit.tasks.Task.loss_parts`: a detector's classification and box losses), on the device, so they
cost no sync until the epoch ends; they become ``train_loss_<part>`` in the history.

Examples:
    >>> parts = LossParts()
    >>> parts.add({"objectness": torch.tensor(1.0), "box_reg": torch.tensor(0.5)})
    >>> parts.add({"objectness": torch.tensor(3.0), "box_reg": torch.tensor(0.5)})
    >>> parts.means()
    {'train_loss_objectness': 2.0, 'train_loss_box_reg': 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["LossParts", "sync_losses"]


def sync_losses(pending: list[Tensor], first_step: int, epoch: int, world_size: int = 1) -> float:
    """The sum of the pending losses (each the mean over ranks), checked finite.

    Args:
        pending: The losses of consecutive steps, on the device.
        first_step: Index (from 0) of the step of ``pending[0]`` in the epoch.
        epoch: The epoch (from 0), for the error message.
        world_size: Processes to average over (``all_reduce``).

    Raises:
        FloatingPointError: A loss is NaN or infinite on any rank (every rank raises together).
    """
    losses = torch.stack(pending).float()
    if world_size > 1:
        dist.all_reduce(losses)  # a NaN on any rank shows on every rank: all raise together
        losses /= world_size
    bad = (~losses.isfinite()).nonzero()
    if len(bad):
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch + 1}, batch {first_step + int(bad[0]) + 1}; the model "
            "keeps the weights of the last good epoch. Lower lr, set clip_grad_norm, or check the inputs."
        )
    return losses.sum().item()


class LossParts:
    """Running sums of a loss's named parts over an epoch; `means` gives ``train_loss_<part>``."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def add(self, parts: Mapping[str, Tensor]) -> None:
        """Adds one step's parts (detached tensors); steps without parts are not counted."""
        if not parts:
            return
        for name, value in parts.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self, world_size: int = 1) -> dict[str, float]:
        """``{"train_loss_<part>": mean over the steps}`` (and over the ranks), one host sync."""
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[name] for name in names]) / self.steps
        if world_size > 1:
            dist.all_reduce(values)
            values /= world_size
        return {f"train_loss_{name}": v for name, v in zip(names, values.tolist())}
