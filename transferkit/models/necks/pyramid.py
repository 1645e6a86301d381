"""Feature pyramids: FPN-lite (top-down) and PAN (FPN-lite plus PANet's bottom-up path).

Both give every level ``out_channels`` channels at its input's stride. `build_model` calls ``prune``
with the levels the head reads, which drops the layers that only feed other levels (their outputs
become None), so every parameter left gets a gradient and the feature cache keeps only what is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureInfo
from .registry import NECKS

__all__ = ["PAN", "FPNLite"]


def _resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


@NECKS.register("fpn_lite")
class FPNLite(nn.Module):
    """A lightweight feature pyramid: 1x1 laterals, top-down upsample-and-add, 3x3 smoothing.

    Every output level has ``out_channels`` channels and the stride of its input level.

    Args:
        feature_info: The backbone's levels.
        out_channels: Channels of every output level.

    Examples:
        >>> neck = FPNLite(FeatureInfo(channels=(8, 16), reductions=(4, 8)), out_channels=32)
        >>> [f.shape for f in neck([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)])]
        [torch.Size([2, 32, 16, 16]), torch.Size([2, 32, 8, 8])]
        >>> neck.prune({1})  # a head that reads the coarse level only
        >>> [None if f is None else f.shape for f in neck([None, torch.randn(2, 16, 8, 8)])]
        [None, torch.Size([2, 32, 8, 8])]
    """

    def __init__(self, feature_info: FeatureInfo, out_channels: int = 128) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        # Keyed by level, so that pruning keeps the other levels' names (the keys of a ModuleList).
        self.lateral = nn.ModuleDict(
            {str(i): nn.Conv2d(c, out_channels, 1) for i, c in enumerate(feature_info.channels)}
        )
        self.smooth = nn.ModuleDict(
            {str(i): nn.Conv2d(out_channels, out_channels, 3, padding=1) for i in range(len(feature_info))}
        )
        self.feature_info = FeatureInfo(
            channels=(out_channels,) * len(feature_info), reductions=feature_info.reductions
        )

    @property
    def _first(self) -> int:
        return min(int(i) for i in self.lateral)

    def prune(self, head_levels: set[int]) -> None:
        """Keep only what outputs ``head_levels`` need: their smoothing, and the laterals from the finest."""
        if not head_levels:
            return
        for i in range(min(head_levels)):  # the top-down path never carries a finer level upwards
            if str(i) in self.lateral:
                del self.lateral[str(i)]
        for i in set(range(len(self.feature_info))) - set(head_levels):
            if str(i) in self.smooth:
                del self.smooth[str(i)]

    def levels_read(self, head_levels: set[int]) -> set[int]:
        """Every level from the finest one with a lateral up: each feeds the finer outputs top-down."""
        return set(range(self._first, len(self.feature_info)))

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        first, n = self._first, len(self.feature_info)
        merged: list[torch.Tensor | None] = [None] * n
        above: torch.Tensor | None = None  # the merged level above (coarser), None at the top
        for i in range(n - 1, first - 1, -1):
            lateral = self.lateral[str(i)](features[i])
            above = lateral if above is None else lateral + _resize_to(above, lateral)
            merged[i] = above
        return [self.smooth[str(i)](f) if str(i) in self.smooth else None for i, f in enumerate(merged)]


@NECKS.register("pan")
class PAN(FPNLite):
    """FPN-lite plus PANet's bottom-up path: fine detail climbs back up to the coarse levels.

    Output ``i`` is ``fuse_i(pyramid_i + down_i(output_{i-1}))`` from the second level on (the first is the
    pyramid's own), where ``down`` is a 3x3 conv with the stride between the two levels (2 for a
    hierarchical backbone, 1 where levels share a stride, as a ViT's do) and ``fuse`` a 3x3 conv.

    Args:
        feature_info: The backbone's levels.
        out_channels: Channels of every output level.

    Examples:
        >>> neck = PAN(FeatureInfo(channels=(8, 16, 32), reductions=(4, 8, 16)), out_channels=24)
        >>> feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
        >>> [f.shape for f in neck(feats)]
        [torch.Size([2, 24, 16, 16]), torch.Size([2, 24, 8, 8]), torch.Size([2, 24, 4, 4])]
    """

    def __init__(self, feature_info: FeatureInfo, out_channels: int = 128) -> None:
        super().__init__(feature_info, out_channels)
        r = feature_info.reductions
        self.down = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=max(1, r[i + 1] // r[i]), padding=1)
            for i in range(len(r) - 1)
        )
        self.fuse = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in r[1:])

    def prune(self, head_levels: set[int]) -> None:
        """The bottom-up path reads every pyramid level up to the coarsest level read: drop the rest."""
        if not head_levels:
            return
        top = max(head_levels)
        super().prune(set(range(top + 1)))
        del self.down[top:]
        del self.fuse[top:]

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        pyramid = super().forward(features)
        out: list[torch.Tensor | None] = [_level(pyramid, 0)]
        below = _level(pyramid, 0)
        for i, (down, fuse) in enumerate(zip(self.down, self.fuse), start=1):
            level = _level(pyramid, i)
            below = fuse(level + _resize_to(down(below), level))
            out.append(below)
        return out + [None] * (len(pyramid) - len(out))


def _level(pyramid: list[torch.Tensor | None], i: int) -> torch.Tensor:
    """Level ``i`` of the top-down pyramid, which PAN's bottom-up path reads (`PAN.prune` keeps it)."""
    level = pyramid[i]
    if level is None:
        raise RuntimeError(f"PAN reads pyramid level {i}, which was pruned; prune with PAN.prune")
    return level
