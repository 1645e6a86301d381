"""The identity neck: the backbone's feature maps, unchanged."""

from __future__ import annotations

import torch
from torch import nn

from ..features import FeatureInfo
from .registry import NECKS

__all__ = ["IdentityNeck"]


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
