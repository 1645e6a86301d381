"""FeatureInfo: what a list of feature maps looks like, level by level."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and reduction (stride relative to the input) of each feature level, fine to coarse.

    Necks and heads are sized from this; backbones and necks expose one as ``feature_info``.

    Args:
        channels: Channels of each level.
        reductions: Stride of each level relative to the input; never decreasing.

    Examples:
        >>> info = FeatureInfo(channels=(64, 128), reductions=(4, 8))
        >>> len(info), info.channels[-1], info.reductions[-1]
        (2, 128, 8)
    """

    channels: tuple[int, ...]
    reductions: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "reductions", tuple(int(r) for r in self.reductions))
        if not self.channels:
            raise ValueError("FeatureInfo needs at least one level")
        if len(self.channels) != len(self.reductions):
            raise ValueError(
                f"FeatureInfo has {len(self.channels)} channel entries but {len(self.reductions)} reductions"
            )
        if any(c < 1 for c in self.channels) or any(r < 1 for r in self.reductions):
            raise ValueError(f"channels and reductions must be positive, got {self}")
        if any(b < a for a, b in zip(self.reductions, self.reductions[1:])):
            raise ValueError(f"reductions must not decrease from fine to coarse, got {self.reductions}")

    def __len__(self) -> int:
        return len(self.channels)

    def select(self, indices: Sequence[int]) -> FeatureInfo:
        """The info of the levels at ``indices``."""
        return FeatureInfo(
            channels=tuple(self.channels[i] for i in indices),
            reductions=tuple(self.reductions[i] for i in indices),
        )

    def check(self, features: Sequence[torch.Tensor], input_size: tuple[int, int]) -> None:
        """Raise ValueError unless ``features`` have these channels and roughly these strides.

        Strides are nominal: valid-padding networks (inception, alexnet) shrink maps a little more.
        """
        if len(features) != len(self):
            raise ValueError(f"expected {len(self)} feature levels, got {len(features)}")
        for level, (f, c, r) in enumerate(zip(features, self.channels, self.reductions)):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(f"level {level}: expected [N, {c}, H, W], got {list(f.shape)}")
            h = f.shape[-2]
            if not (input_size[0] / r) * 0.5 <= h <= -(-input_size[0] // r):
                raise ValueError(f"level {level}: height {h} does not fit stride {r} at input {input_size}")
