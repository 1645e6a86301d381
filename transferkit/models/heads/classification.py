"""Classification heads: the list of feature maps to logits ``[N, num_classes]``."""

from __future__ import annotations

import torch
from torch import nn

from ..features import FeatureInfo
from .registry import HEADS

__all__ = ["LinearHead"]


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Global average pooling of the coarsest level, optional dropout, then a linear layer.

    Args:
        feature_info: The neck's levels.
        num_classes: Output classes.
        dropout: Dropout probability before the linear layer.

    Examples:
        >>> head = LinearHead(FeatureInfo(channels=(8, 16), reductions=(4, 8)), num_classes=5)
        >>> head([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)], input_size=(64, 64)).shape
        torch.Size([2, 5])
    """

    task = "classification"

    def __init__(self, feature_info: FeatureInfo, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_info.channels[-1], num_classes)
        self.levels = [len(feature_info) - 1]  # the levels forward reads

    def forward(self, features: list[torch.Tensor], input_size: tuple[int, int]) -> torch.Tensor:
        pooled = features[-1].mean(dim=(-2, -1))
        return self.fc(self.dropout(pooled))
