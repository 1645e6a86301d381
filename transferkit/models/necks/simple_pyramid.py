"""ViTDet's simple feature pyramid (Li et al., 2022): strides 4 to 32 from the last map of a ViT.

A plain ViT gives maps of one stride (16, or 14 for patch-14 models), while segmentation and detection
heads fuse several. ViTDet builds the pyramid from the last map alone, one branch per output stride:
2x2 transposed convolutions to go finer, 2x2 max-pooling to go coarser, then a 1x1 and a 3x3
convolution, each followed by a LayerNorm over the channels. `build_model` puts it in front of the neck
when a head that needs a pyramid (``needs_pyramid``) meets a backbone with one stride (`SimplePyramidFirst`
for a neck other than ``identity``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureInfo
from .registry import NECKS

__all__ = ["LayerNorm2d", "SimplePyramid", "SimplePyramidFirst"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels at each position of an ``[N, C, H, W]`` map, as ViTDet normalises.

    It normalises each sample on its own, so it trains on batches of one or two images (BatchNorm
    cannot), and it exports as two permutes around a layer norm.

    Examples:
        >>> LayerNorm2d(8)(torch.randn(1, 8, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _rescale(channels: int, steps: int) -> tuple[nn.Module, int]:
    """The path that scales a map by ``2 ** steps`` and its output channels.

    Finer (``steps > 0``): 2x2 transposed convolutions of stride 2, each halving the channels (the fine
    maps are the large ones), with a norm and GELU between two of them. Coarser: max-pooling over squares
    of side ``2 ** -steps`` (2x2 for one step), rounding up as a padded convolution would (a 3x3 map gives
    2x2). Neither: the map itself.
    """
    if steps <= 0:
        size = 2**-steps
        return (nn.MaxPool2d(size, size, ceil_mode=True) if steps else nn.Identity()), channels
    layers: list[nn.Module] = []
    for step in range(steps):
        if step:
            layers += [LayerNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, max(1, channels // 2), 2, stride=2))
        channels = max(1, channels // 2)
    return nn.Sequential(*layers), channels


class _Level(nn.Module):
    """One output level: rescale, resize where the scale is not a power of 2, project to ``out_channels``."""

    def __init__(self, in_channels: int, in_stride: int, stride: int, out_channels: int) -> None:
        super().__init__()
        self.in_stride, self.stride = in_stride, stride
        steps = round(math.log2(in_stride / stride))  # the nearest power of 2; resized exactly below
        self.exact = 2.0**steps == in_stride / stride
        self.rescale, channels = _rescale(in_channels, steps)
        self.project = nn.Sequential(
            nn.Conv2d(channels, out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return self.project(self.rescale(x))
        # a patch-14 ViT: 16x16 tokens of a 224 px input give 56, 28, 14 and 7 (the input's side / stride)
        size = [-(-side * self.in_stride // self.stride) for side in x.shape[-2:]]
        return self.project(F.interpolate(self.rescale(x), size=size, mode="bilinear", align_corners=False))


@NECKS.register("simple_pyramid")
class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid: maps of ``strides`` from the last (coarsest) input level alone.

    Each output level has its own branch: the last level scaled by its stride over the output stride
    (two 2x2 transposed convolutions with a norm and GELU between them for 4x, one for 2x, none for 1x,
    2x2 max-pooling for 0.5x), then a 1x1 convolution to ``out_channels`` and a 3x3 convolution, each
    followed by a LayerNorm over the channels. Where the scale is not a power of 2 (a patch-14 ViT has
    stride 14) the nearest one is taken and the map resized to the input's size over the output stride.
    The other input levels are not read. ``prune`` drops the branches no head output needs.

    Args:
        feature_info: The backbone's levels; the last one is read.
        out_channels: Channels of every output level.
        strides: The output levels' strides relative to the input, increasing.

    Examples:
        >>> vit = FeatureInfo(channels=(192, 192, 192), reductions=(16, 16, 16))
        >>> neck = SimplePyramid(vit, out_channels=32)
        >>> neck.feature_info.reductions, neck.levels_read({0, 1, 2, 3})
        ((4, 8, 16, 32), {2})
        >>> [tuple(f.shape) for f in neck([None, None, torch.randn(2, 192, 4, 4)])]  # a 64 px input
        [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
        >>> neck.prune({1, 2, 3})  # a head that reads strides 8 to 32
        >>> [None if f is None else tuple(f.shape) for f in neck([None, None, torch.randn(2, 192, 4, 4)])]
        [None, (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    """

    builds_pyramid = True  # build_model puts no second pyramid in front of it

    def __init__(
        self, feature_info: FeatureInfo, out_channels: int = 128, strides: Sequence[int] = (4, 8, 16, 32)
    ) -> None:
        super().__init__()
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be an int >= 1, got {out_channels!r}")
        strides = tuple(strides)
        if (
            not strides
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides)
            or any(b <= a for a, b in zip(strides, strides[1:]))
        ):
            raise ValueError(f"strides must be increasing ints >= 1, such as (4, 8, 16, 32), got {strides!r}")
        self.source = len(feature_info) - 1
        channels, stride = feature_info.channels[-1], feature_info.reductions[-1]
        self.levels = nn.ModuleDict(
            {str(i): _Level(channels, stride, s, out_channels) for i, s in enumerate(strides)}
        )  # keyed by level, so that pruning keeps the other levels' names
        self.feature_info = FeatureInfo(channels=(out_channels,) * len(strides), reductions=strides)

    def levels_read(self, head_levels: set[int]) -> set[int]:
        """Only the last input level, whatever the head reads."""
        return {self.source}

    def prune(self, head_levels: set[int]) -> None:
        """Drop the branches of the output levels not in ``head_levels`` (their outputs become None)."""
        if not head_levels:
            return
        for i in set(range(len(self.feature_info))) - set(head_levels):
            if str(i) in self.levels:
                del self.levels[str(i)]

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        last = features[self.source]
        if last is None:
            raise RuntimeError(f"the simple pyramid reads input level {self.source}, which is missing")
        keys = (str(i) for i in range(len(self.feature_info)))
        return [self.levels[k](last) if k in self.levels else None for k in keys]


class SimplePyramidFirst(nn.Module):
    """A neck fed by a `SimplePyramid`: how ``fpn_lite``, ``pan`` or ``aspp`` read a one-stride backbone.

    `build_model` builds it when a head needs a pyramid, the backbone's levels share one stride (a ViT)
    and the neck builds none itself: ``neck="aspp"`` with ``head="deeplabv3plus"`` on a ViT then makes
    ViTDet's pyramid, ASPP on its stride-32 level and the decoder's stride-4 skip from it.

    Args:
        pyramid: The simple pyramid on the backbone's levels.
        neck: The neck, built on ``pyramid.feature_info``.

    Examples:
        >>> from transferkit.models.necks import FPNLite
        >>> pyramid = SimplePyramid(FeatureInfo(channels=(64,), reductions=(16,)), out_channels=32)
        >>> neck = SimplePyramidFirst(pyramid, FPNLite(pyramid.feature_info, out_channels=16))
        >>> neck.prune({1, 2, 3})
        >>> [None if f is None else tuple(f.shape) for f in neck([torch.randn(1, 64, 4, 4)])]
        [None, (1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2)]
    """

    def __init__(self, pyramid: SimplePyramid, neck: nn.Module) -> None:
        super().__init__()
        self.pyramid, self.neck = pyramid, neck
        self.feature_info = cast(FeatureInfo, neck.feature_info)

    def _pyramid_levels(self, head_levels: set[int]) -> set[int]:
        read = getattr(self.neck, "levels_read", None)
        return set(read(head_levels)) if read is not None else set(range(len(self.pyramid.feature_info)))

    def levels_read(self, head_levels: set[int]) -> set[int]:
        """The backbone levels the pyramid reads: only the last one."""
        return self.pyramid.levels_read(self._pyramid_levels(head_levels))

    def prune(self, head_levels: set[int]) -> None:
        """Prune the neck for ``head_levels``, then the pyramid for the levels the neck still reads."""
        prune = getattr(self.neck, "prune", None)
        if prune is not None:
            prune(head_levels)
        self.pyramid.prune(self._pyramid_levels(head_levels))

    def forward(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return self.neck(self.pyramid(features))
