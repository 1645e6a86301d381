"""Segmentation heads: the list of feature maps to per-pixel logits ``[N, num_classes, H, W]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureInfo
from .registry import HEADS

__all__ = ["FCNHead"]


@HEADS.register("fcn")
class FCNHead(nn.Module):
    """FCN-8s style segmentation: score the levels with stride >= 8, fuse coarse to fine, upsample.

    Each level with stride >= 8 (or the coarsest level when none has) gets a 1x1 score layer; scores
    are upsampled and summed from the coarsest level down to the finest of them, then bilinearly
    upsampled to the input size.

    Args:
        feature_info: The neck's levels.
        num_classes: Output classes.
        hidden_channels: Channels of the 3x3 conv applied to the coarsest level before scoring
            (0 to score it directly).
        dropout: Dropout probability before the coarsest level's score layer.

    Examples:
        >>> info = FeatureInfo(channels=(8, 16, 32), reductions=(4, 8, 16))
        >>> head = FCNHead(info, num_classes=3)
        >>> feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
        >>> head(feats, input_size=(64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    task = "segmentation"

    def __init__(
        self, feature_info: FeatureInfo, num_classes: int, hidden_channels: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        levels = [i for i, r in enumerate(feature_info.reductions) if r >= 8] or [len(feature_info) - 1]
        self.levels = levels
        coarsest = feature_info.channels[levels[-1]]
        if hidden_channels:
            self.top = nn.Sequential(
                nn.Conv2d(coarsest, hidden_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            )
            coarsest = hidden_channels
        else:
            self.top = nn.Dropout2d(dropout)
        channels = [feature_info.channels[i] for i in levels[:-1]] + [coarsest]
        self.score = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        maps = [features[i] for i in self.levels]
        maps[-1] = self.top(maps[-1])
        out = self.score[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            skip = self.score[i](maps[i])
            out = skip + F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(out, size=tuple(input_size), mode="bilinear", align_corners=False)
