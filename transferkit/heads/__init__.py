"""Task heads: map the list of feature maps to the task's output.

A head is called as ``head(features, input_size)``; ``input_size`` is the input's ``(H, W)``. Each head
declares its ``task`` (see `transferkit.tasks`): ``classification.py`` holds the heads that give logits
``[N, K]``, ``segmentation.py`` those that give masks ``[N, K, H, W]``.
"""

from __future__ import annotations

from .classification import LinearHead
from .registry import HEADS
from .segmentation import FCNHead

__all__ = ["HEADS", "FCNHead", "LinearHead"]
