"""Task heads: map the list of feature maps to the task's output.

A head is called as ``head(features, input_size)``; ``input_size`` is the input's ``(H, W)``. Each head
declares its ``task`` (see `transferkit.tasks`): ``classification.py`` holds the heads that give logits
``[N, K]``, ``segmentation.py`` those that give masks ``[N, K, H, W]``, ``detection/`` the detectors
(torchvision's four and the YOLO head), called as ``head(features, input_size, targets=None)``: the
loss dict in training, boxes per image in eval mode (``detection/parts.py`` holds what they share).
A head that fuses several strides sets ``needs_pyramid = True``: on a backbone whose levels share one
stride (a ViT), `build_model` then feeds it ViTDet's simple pyramid (see `transferkit.models.necks`).
"""

from __future__ import annotations

from .classification import LinearHead
from .detection import FasterRCNNHead, FCOSHead, RetinaNetHead, SSDLiteHead, YOLOHead
from .registry import HEADS
from .segmentation import DeepLabV3PlusHead, FCNHead

__all__ = [
    "HEADS",
    "DeepLabV3PlusHead",
    "FCNHead",
    "FCOSHead",
    "FasterRCNNHead",
    "LinearHead",
    "RetinaNetHead",
    "SSDLiteHead",
    "YOLOHead",
]
