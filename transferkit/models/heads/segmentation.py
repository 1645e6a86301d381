"""Segmentation heads: the list of feature maps to per-pixel logits ``[N, num_classes, H, W]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from ..features import FeatureInfo
from .registry import HEADS

__all__ = ["DeepLabV3PlusHead", "FCNHead"]


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
    needs_pyramid = True  # on a one-stride backbone (a ViT), build_model adds the simple pyramid

    def __init__(
        self, feature_info: FeatureInfo, num_classes: int, hidden_channels: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        levels = [i for i, r in enumerate(feature_info.reductions) if r >= 8] or [len(feature_info) - 1]
        self.levels = levels
        coarsest = feature_info.channels[levels[-1]]
        self.top: nn.Module  # a conv block before the scoring, or only dropout
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


@HEADS.register("deeplabv3plus")
class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+'s decoder: the coarsest level, upsampled to the stride-4 level and fused with it.

    The stride-4 level is reduced to ``skip_channels`` by a 1x1 conv; the coarsest level is bilinearly
    upsampled to its size and concatenated with it; two 3x3 convs fuse them, a 1x1 conv scores each
    class, and the scores are upsampled to the input size. With ``neck="aspp"`` the coarsest level is
    the ASPP output, which makes the whole of DeepLabV3+; with another neck the decoder reads that
    neck's coarsest level instead.

    Args:
        feature_info: The neck's levels; one finer than the coarsest must have stride 4.
        num_classes: Output classes.
        skip_channels: Channels the stride-4 level is reduced to.
        hidden_channels: Channels of the two fusing 3x3 convs.
        dropout: Dropout probability before the score layer.

    Raises:
        ValueError: No level finer than the coarsest has stride 4: there is nothing for the decoder to
            fuse. ``head="fcn"`` works on any strides; `build_model` gives a ViT (one stride) the simple
            pyramid, which has stride 4.

    Examples:
        >>> info = FeatureInfo(channels=(8, 16, 32), reductions=(4, 8, 16))
        >>> head = DeepLabV3PlusHead(info, num_classes=3, hidden_channels=24)
        >>> feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
        >>> head(feats, input_size=(64, 64)).shape, head.levels
        (torch.Size([2, 3, 64, 64]), [0, 2])
    """

    task = "segmentation"
    needs_pyramid = True  # on a one-stride backbone (a ViT), build_model adds the simple pyramid

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        skip_channels: int = 48,
        hidden_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        coarsest = len(feature_info) - 1
        skips = [i for i in range(coarsest) if feature_info.reductions[i] == 4]
        if not skips:
            raise ValueError(
                "head 'deeplabv3plus' fuses the coarsest level with a finer level of stride 4, but these "
                f"levels have strides {feature_info.reductions}. Use head='fcn' (any strides), "
                "neck='simple_pyramid' (strides 4 to 32 from the coarsest level), or a backbone and "
                "out_indices with a stride-4 level (ResNets, ConvNeXts, EfficientNets)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.levels = [skips[-1], coarsest]
        channels = feature_info.channels
        self.reduce = Conv2dNormActivation(channels[skips[-1]], skip_channels, 1)
        self.fuse = nn.Sequential(
            Conv2dNormActivation(channels[coarsest] + skip_channels, hidden_channels, 3),
            Conv2dNormActivation(hidden_channels, hidden_channels, 3),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.score = nn.Conv2d(hidden_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        skip = self.reduce(features[self.levels[0]])
        coarse = F.interpolate(
            features[self.levels[1]], size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        out = self.score(self.dropout(self.fuse(torch.cat([coarse, skip], dim=1))))
        return F.interpolate(out, size=tuple(input_size), mode="bilinear", align_corners=False)
