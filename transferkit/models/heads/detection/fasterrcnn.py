"""The Faster R-CNN head: torchvision's Faster R-CNN parts on transferkit's feature levels."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch  # noqa: F401  (the examples below use it)
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import LevelMapper

from ...features import FeatureInfo
from ..registry import HEADS
from .parts import (
    DetectionHead,
    Detections,
    _images,
    _LevelAnchors,
    _shared_channels,
    detection_levels,
)

__all__ = ["FasterRCNNHead"]


@HEADS.register("fasterrcnn")
class FasterRCNNHead(DetectionHead):
    """Faster R-CNN: torchvision's RPN on every level of stride >= 4 plus a max-pool level, then RoI heads.

    RPN anchors are ``anchor_scale`` times each level's stride (torchvision: 32 px at stride 4) in three
    aspect ratios; RoIAlign pools 7x7 from the levels (not the max-pool one) with scales set from their
    strides; a two-layer MLP and torchvision's box predictor score ``num_classes + 1`` classes.

    Args:
        feature_info: The neck's levels; the ones read need equal channels and strides that double.
        num_classes: Real classes (the head adds the background class its softmax needs).
        anchor_scale: RPN anchor side per level, in strides.
        aspect_ratios: RPN anchor height / width ratios.
        representation_size: Width of the RoI MLP.
        proposals: RPN proposals kept per image before and after NMS, ``(training, testing)``.
        rpn_batch_size_per_image: Anchors sampled per image for the RPN loss.
        box_batch_size_per_image: Proposals sampled per image for the RoI loss.
        score_thresh: Minimum score of a detection.
        nms_thresh: IoU of class-wise NMS.
        detections_per_img: Detections kept per image (100: all that COCO mAP counts).

    Examples:
        >>> head = FasterRCNNHead(FeatureInfo((32, 32), (4, 8)), num_classes=2, representation_size=64)
        >>> head.eval()([torch.randn(1, 32, 16, 16), torch.randn(1, 32, 8, 8)], (64, 64))[0]["boxes"].shape[1]
        4
    """

    label_offset = 1

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        anchor_scale: float = 8.0,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        representation_size: int = 1024,
        proposals: Sequence[int] = (2000, 1000),
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.levels = detection_levels(feature_info, 4)
        channels = _shared_channels(feature_info, self.levels, "fasterrcnn")
        strides = [feature_info.reductions[i] for i in self.levels]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])) or math.log2(strides[0]) % 1:
            raise ValueError(
                "head 'fasterrcnn' pools each box from the level its size maps to, which needs strides "
                f"that are powers of 2 doubling from level to level; its levels have strides {strides}. "
                "Use out_indices with such levels, or head='fcos' / 'retinanet' (any strides)"
            )
        self.strides, self.extra = [*strides, 2 * strides[-1]], LastLevelMaxPool()
        generator = AnchorGenerator(
            tuple((anchor_scale * s,) for s in self.strides), (tuple(aspect_ratios),) * len(self.strides)
        )
        train, test = (int(n) for n in proposals)
        self.rpn = RegionProposalNetwork(
            _LevelAnchors(generator, self.strides),
            RPNHead(channels, len(aspect_ratios)),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=0.5,
            pre_nms_top_n={"training": train, "testing": test},
            post_nms_top_n={"training": train, "testing": test},
            nms_thresh=0.7,
        )
        pool = MultiScaleRoIAlign([str(i) for i in range(len(strides))], output_size=7, sampling_ratio=2)
        pool.scales = [1.0 / s for s in strides]  # instead of rounding feature size / first batch's size
        pool.map_levels = LevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])))
        self.detections_per_img = int(detections_per_img)
        self.roi_heads = RoIHeads(
            pool,
            TwoMLPHead(channels * 7 * 7, representation_size),
            FastRCNNPredictor(representation_size, num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
        )

    def _named(self, maps: list[Tensor]) -> OrderedDict[str, Tensor]:
        return OrderedDict([(str(i), m) for i, m in enumerate(maps[:-1])] + [("pool", maps[-1])])

    def losses(self, maps: list[Tensor], size: tuple[int, int], targets: Detections) -> dict[str, Tensor]:
        images, named = _images(maps, size), self._named(maps)
        proposals, rpn_losses = self.rpn(images, named, targets)
        _, roi_losses = self.roi_heads(named, proposals, images.image_sizes, targets)
        return {**rpn_losses, **roi_losses}

    def detect(self, maps: list[Tensor], size: tuple[int, int]) -> Detections:
        images, named = _images(maps, size), self._named(maps)
        proposals, _ = self.rpn(images, named)
        detections, _ = self.roi_heads(named, proposals, images.image_sizes)
        return detections
