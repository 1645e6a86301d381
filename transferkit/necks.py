"""Necks: map a list of feature maps to a list of feature maps, sized from ``feature_info``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureInfo
from .registry import Registry

__all__ = ["NECKS", "IdentityNeck", "FPNLite"]

NECKS = Registry("neck")


@NECKS.register("identity")
class IdentityNeck(nn.Module):
    """Passes the backbone's feature maps through unchanged.

    Args:
        feature_info: The backbone's levels.

    Examples:
        >>> neck = IdentityNeck(FeatureInfo(channels=(8, 16), reductions=(4, 8)))
        >>> [f.shape for f in neck([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)])]
        [torch.Size([2, 8, 16, 16]), torch.Size([2, 16, 8, 8])]
    """

    def __init__(self, feature_info: FeatureInfo) -> None:
        super().__init__()
        self.feature_info = feature_info

    def levels_read(self, head_levels: set[int]) -> set[int]:
        """The input levels needed for the head to read ``head_levels``: the same ones."""
        return set(head_levels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return features


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
    """

    def __init__(self, feature_info: FeatureInfo, out_channels: int = 128) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in feature_info.channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in feature_info.channels
        )
        self.feature_info = FeatureInfo(
            channels=(out_channels,) * len(feature_info), reductions=feature_info.reductions
        )

    def levels_read(self, head_levels: set[int]) -> set[int]:
        """Every input level feeds every output level through the top-down path."""
        return set(range(len(self.lateral)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 2, -1, -1):
            coarser = laterals[i + 1]
            if coarser.shape[-2:] != laterals[i].shape[-2:]:
                coarser = F.interpolate(coarser, size=laterals[i].shape[-2:], mode="nearest")
            laterals[i] = laterals[i] + coarser
        return [conv(f) for conv, f in zip(self.smooth, laterals)]
