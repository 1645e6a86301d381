"""DeepLabV3's atrous spatial pyramid pooling, as a module and as the ``aspp`` neck."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from ..features import FeatureInfo
from .registry import NECKS

__all__ = ["ASPP", "ASPPNeck", "default_rates"]


def default_rates(stride: int) -> tuple[int, ...]:
    """DeepLab's atrous rates for a map of ``stride``: (6, 12, 18) at 16, twice that at 8, half at 32.

    The rates scale with the map's size so the branches see the same share of the image: a coarser map
    is smaller and gets smaller rates (never below 1).

    Examples:
        >>> default_rates(8), default_rates(16), default_rates(32)
        ((12, 24, 36), (6, 12, 18), (3, 6, 9))
    """
    return tuple(max(1, rate * 16 // stride) for rate in (6, 12, 18))


class _ImagePooling(nn.Sequential):
    """The image-level branch: global average pooling, 1x1 conv, norm, ReLU, spread over the map.

    A Sequential, so that its state_dict keys (``1.weight``, ``2.running_mean``, ...) are those of
    torchvision's ``ASPPPooling``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool, conv, _, act = self
        norm = cast(nn.BatchNorm2d, self[2])  # built in __init__
        pooled = conv(pool(x))
        if self.training and norm.training and pooled.shape[0] == 1:
            # One image gives one value per channel: there are no batch statistics, so normalise with
            # the running ones (as eval mode does) and leave them unchanged.
            pooled = F.batch_norm(
                pooled, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
            )
        else:
            pooled = norm(pooled)
        return act(pooled).expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is a copy


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1, dilated 3x3 and image-pooling branches, concatenated
    and projected by a 1x1 conv (each conv followed by BatchNorm and ReLU), then dropout.

    Its state_dict has the layout of torchvision's ``deeplabv3.ASPP`` (``convs.0`` the 1x1 branch,
    ``convs.1`` ... the dilated ones, then the pooling branch, ``project``), so DeepLabV3 weights load
    into it. Unlike torchvision's, it also trains on a batch of one image (see `ASPPNeck`).

    Args:
        in_channels: Channels of the input map.
        rates: Dilation of each 3x3 branch.
        out_channels: Channels of every branch and of the output.
        dropout: Dropout probability after the projection.

    Examples:
        >>> aspp = ASPP(32, rates=(6, 12, 18), out_channels=16)
        >>> aspp(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(
        self, in_channels: int, rates: Sequence[int], out_channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [Conv2dNormActivation(in_channels, out_channels, 1)]
        branches += [Conv2dNormActivation(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(_ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *Conv2dNormActivation(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


@NECKS.register("aspp")
class ASPPNeck(nn.Module):
    """`ASPP` on the coarsest level; the finer levels pass through unchanged, for a decoder to read.

    The rates follow the coarsest level's stride (`default_rates`): 12/24/36 at stride 8 (a dilated
    backbone, ``output_stride=8``), 6/12/18 at 16, 3/6/9 at 32. The pooling branch normalises with its
    running statistics when training on a batch of one image, which has no batch statistics there.

    Args:
        feature_info: The backbone's levels.
        out_channels: Channels of the ASPP output (the coarsest level).
        rates: Dilation of each 3x3 branch (default: from the coarsest level's stride).
        dropout: Dropout probability after the projection.

    Examples:
        >>> neck = ASPPNeck(FeatureInfo(channels=(8, 16), reductions=(4, 16)), out_channels=32)
        >>> neck.rates, neck.feature_info.channels
        ((6, 12, 18), (8, 32))
        >>> [f.shape for f in neck([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 4, 4)])]
        [torch.Size([2, 8, 16, 16]), torch.Size([2, 32, 4, 4])]
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        out_channels: int = 256,
        rates: Sequence[int] | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        rates = default_rates(feature_info.reductions[-1]) if rates is None else tuple(rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"rates must be one or more ints >= 1, got {rates!r}")
        self.rates = rates
        self.aspp = ASPP(feature_info.channels[-1], rates, out_channels, dropout)
        self.feature_info = FeatureInfo(
            channels=(*feature_info.channels[:-1], out_channels), reductions=feature_info.reductions
        )

    def levels_read(self, head_levels: set[int]) -> set[int]:
        """Each output level comes from its own input level: the ones the head reads."""
        return set(head_levels)

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        *finer, coarsest = features
        return [*finer, None if coarsest is None else self.aspp(coarsest)]
