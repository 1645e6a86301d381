"""The SSDLite head: torchvision's SSDLite parts on transferkit's feature levels."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import ssd as tv_ssd
from torchvision.models.detection import ssdlite as tv_ssdlite
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ...features import FeatureInfo
from ..registry import HEADS
from .parts import (
    DetectionHead,
    Detections,
    _images,
    _Unused,
    detection_levels,
)

__all__ = ["SSDLiteHead"]


@HEADS.register("ssdlite")
class SSDLiteHead(DetectionHead):
    """SSDLite: torchvision's depthwise-separable SSDLite head on the levels of stride >= 16 plus two more.

    The default boxes are torchvision's ``DefaultBoxGenerator`` (scales ``min_ratio`` to ``max_ratio`` of
    the image) centred on each level's real stride; hard-negative mining, smooth-L1 and softmax losses
    and post-processing are torchvision's SSD ones. Levels may have different channels.

    Args:
        feature_info: The neck's levels.
        num_classes: Real classes (the head adds the background class its softmax needs).
        aspect_ratios: Extra aspect ratios per level (each gives two boxes).
        min_ratio: Default-box scale of the finest level, as a fraction of the image.
        max_ratio: Default-box scale of the coarsest level.
        iou_thresh: IoU from which a default box matches a ground-truth box.
        score_thresh: Minimum score of a detection.
        nms_thresh: IoU of class-wise NMS.
        detections_per_img: Detections kept per image (100: all that COCO mAP counts).
        topk_candidates: Candidates per class before NMS.

    Examples:
        >>> head = SSDLiteHead(FeatureInfo((16, 24), (16, 32)), num_classes=2).eval()
        >>> out = head([torch.randn(1, 16, 4, 4), torch.randn(1, 24, 2, 2)], input_size=(64, 64))
        >>> out[0]["boxes"].shape[1], head.strides
        (4, [16, 32, 64, 128])
    """

    label_offset = 1

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        aspect_ratios: Sequence[float] = (2.0, 3.0),
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
        iou_thresh: float = 0.5,
        score_thresh: float = 0.001,
        nms_thresh: float = 0.55,
        detections_per_img: int = 100,
        topk_candidates: int = 300,
    ) -> None:
        super().__init__()
        self.levels = detection_levels(feature_info, 16)
        channels = [feature_info.channels[i] for i in self.levels]
        coarsest = feature_info.reductions[self.levels[-1]]
        self.strides = [feature_info.reductions[i] for i in self.levels] + [2 * coarsest, 4 * coarsest]
        self.extra = LastLevelP6P7(channels[-1], channels[-1])
        generator = DefaultBoxGenerator(
            [list(aspect_ratios)] * len(self.strides), min_ratio, max_ratio, steps=self.strides
        )
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDLite settings
        head = tv_ssdlite.SSDLiteHead(
            [*channels, channels[-1], channels[-1]],
            generator.num_anchors_per_location(),
            num_classes + 1,
            norm,
        )
        self.detections_per_img = int(detections_per_img)
        self.detector = tv_ssd.SSD(
            _Unused(),
            generator,
            (1, 1),  # the size of torchvision's fixed resize, which is not used
            num_classes + 1,
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            iou_thresh=iou_thresh,
            topk_candidates=topk_candidates,
        )
        self.detector.transform = _Unused()

    def losses(self, maps: list[Tensor], size: tuple[int, int], targets: Detections) -> dict[str, Tensor]:
        outputs = self.detector.head(maps)
        anchors = self.detector.anchor_generator(_images(maps, size), maps)
        matched = []
        for boxes, target in zip(anchors, targets):
            if target["boxes"].numel() == 0:
                matched.append(torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device))
            else:
                iou = box_iou(target["boxes"], boxes)
                matched.append(self.detector.proposal_matcher(iou))
        return self.detector.compute_loss(targets, outputs, anchors, matched)

    def detect(self, maps: list[Tensor], size: tuple[int, int]) -> Detections:
        outputs = self.detector.head(maps)
        anchors = self.detector.anchor_generator(_images(maps, size), maps)
        return self.detector.postprocess_detections(outputs, anchors, [size] * len(anchors))
