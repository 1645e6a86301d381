"""The torchmetrics metrics behind transferkit's meters, and how they are computed over every process.

torchmetrics sums (or gathers) each metric's state over the processes of ``torch.distributed`` when
``compute()`` runs, so the meters have no synchronisation code of their own; every process must call
``compute()``. Two metrics need a change for that to hold:

- `ConfusionCounts` is torchmetrics' ``MulticlassConfusionMatrix`` counted with ``torch.bincount``:
  torchmetrics' own count falls back, on MPS and in deterministic mode, to a ``[pixels, K * K]`` tensor,
  gigabytes for one batch of segmentation masks.
- `GatheredMeanAveragePrecision` is torchmetrics' ``MeanAveragePrecision`` whose images are gathered
  with one ``all_gather_object``, rank by rank: torchmetrics gathers its per-image tensors one
  collective each, which stalls when the processes hold different numbers of images (evaluation gives
  each image to one process, so they do).

This module imports torchmetrics (about a second); the meters import it when they are built.

Examples:
    >>> counts = ConfusionCounts(num_classes=3)
    >>> counts.update(torch.tensor([0, 2, 2]), torch.tensor([0, 1, 2]))  # predictions [3], truth [3]
    >>> synced_compute(counts)
    tensor([[1, 0, 0],
            [0, 0, 1],
            [0, 0, 1]])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch  # noqa: F401  (the example uses it)
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["ConfusionCounts", "GatheredMeanAveragePrecision", "synced_compute"]


def synced_compute(metric: Metric) -> Any:
    """``metric.compute()``: its value over every process when ``torch.distributed`` is initialised.

    A process that saw no batch still takes part (the others wait for it); torchmetrics' warning that
    ``compute`` ran before ``update`` is left out, as the meters check the counted total themselves.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
        return metric.compute()


class ConfusionCounts(MulticlassConfusionMatrix):
    """``MulticlassConfusionMatrix`` counted by ``count`` (the segmentation meter passes
    `transferkit.tasks.metrics.confusion_matrix`: its checks, and ``torch.bincount`` on every device;
    None: torchmetrics' own count); ``confmat`` (rows are the truth) is summed over processes.

    ``update(preds, targets)`` takes predicted and true class indices of the same shape; targets equal
    to ``ignore_index`` are skipped.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        count: Callable[[Tensor, Tensor, int, int], Tensor] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)
        self.classes, self.ignored = num_classes, ignore_index  # torchmetrics types both as optional
        self.count = count

    def update(self, preds: Tensor, target: Tensor) -> None:
        if self.count is None:
            super().update(preds, target)
            return
        counted = self.count(preds, target, self.classes, self.ignored)
        self.confmat += counted.to(self.confmat.device)


class GatheredMeanAveragePrecision(MeanAveragePrecision):
    """``MeanAveragePrecision`` whose per-image states are gathered rank by rank in one collective."""

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        group = process_group or self.process_group
        local = {name: getattr(self, name) for name in self._reductions}
        everyone: list[dict[str, list[Tensor]] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, local, group=group)
        for name in local:
            setattr(self, name, [item for part in everyone for item in (part or {}).get(name, [])])

    def compute(self) -> dict[str, Tensor]:
        """torchmetrics' result; ``ValueError`` when no process saw an image (runs on the gathered state)."""
        if not self.groundtruth_labels:
            raise ValueError("DetectionMeter has seen no images; call update() before compute().")
        return super().compute()
