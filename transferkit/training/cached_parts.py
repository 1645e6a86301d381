"""The modules and batches of the feature cache: the frozen prefix's two ends, and a batch of its outputs.

`TrainablePart` runs what follows the frozen prefix; `CachedInputs` lets a pass call it on a `CachedBatch`
as it calls the model on images, so no loop branches on which of the two it holds
(`transferkit.training.loaders.Feed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["CachedBatch", "CachedInputs", "ScatterLevels", "SelectLevels", "TrainablePart"]


class SelectLevels(nn.Module):
    """The whole backbone as a prefix: returns the levels the neck and head read, as a tuple."""

    def __init__(self, backbone: nn.Module, levels: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.levels = backbone, list(levels)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.backbone(x)
        return tuple(features[i] for i in self.levels)


class ScatterLevels(nn.Module):
    """The matching suffix: puts the cached levels back at their places, None elsewhere."""

    def __init__(self, levels: Sequence[int], num_levels: int) -> None:
        super().__init__()
        self.levels, self.num_levels = list(levels), num_levels

    def forward(self, *state: Tensor) -> list[Tensor | None]:
        features: list[Tensor | None] = [None] * self.num_levels
        for i, f in zip(self.levels, state, strict=True):
            features[i] = f
        return features


class TrainablePart(nn.Module):
    """What runs after the frozen prefix: the backbone's suffix, then the neck and the head.

    Shares its modules (and so its parameters and train/eval modes) with the model.

    Args:
        suffix: ``suffix(*state) -> feature maps`` (from ``backbone.split``).
        neck: The model's neck.
        head: The model's head.

    Examples:
        >>> prefix, suffix = model.backbone.split(7, levels=model.levels_read)
        >>> part = TrainablePart(suffix, model.neck, model.head)
        >>> part(*prefix(x), input_size=tuple(x.shape[-2:])).shape  # equals model(x)
        torch.Size([8, 2])
    """

    def __init__(self, suffix: nn.Module, neck: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.suffix, self.neck, self.head = suffix, neck, head

    def forward(self, *state: Tensor, input_size: tuple[int, int]) -> Tensor:
        return self.head(self.neck(self.suffix(*state)), input_size)


@dataclass(frozen=True)
class CachedBatch:
    """A batch of cached prefix outputs: what the trainable part reads in place of the images.

    Attributes:
        state: The prefix's outputs, each ``[N, ...]``.
        input_size: ``(H, W)`` of the images they came from (segmentation heads upsample to it).
    """

    state: tuple[Tensor, ...]
    input_size: tuple[int, int]

    def to(
        self,
        device: torch.device,
        non_blocking: bool = False,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> CachedBatch:
        """The batch on ``device`` (4-d tensors in ``memory_format``), like ``Tensor.to``."""
        return CachedBatch(
            tuple(
                s.to(device, non_blocking=non_blocking, memory_format=memory_format)
                if s.ndim == 4
                else s.to(device, non_blocking=non_blocking)
                for s in self.state
            ),
            self.input_size,
        )

    def __len__(self) -> int:
        """Samples in the batch."""
        return next(len(s) for s in self.state if s is not None)


class CachedInputs(nn.Module):
    """Calls ``part(*batch.state, input_size=batch.input_size)`` for a `CachedBatch`: the trainable part
    (maybe compiled) behind the one-argument call a model takes.

    Examples:
        >>> CachedInputs(cache.trainable)(batch).shape  # batch: a CachedBatch of 8 samples, 2 classes
        torch.Size([8, 2])
    """

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def forward(self, batch: CachedBatch) -> Tensor:
        return self.part(*batch.state, input_size=batch.input_size)
