"""The FCOS head: torchvision's FCOS parts on transferkit's feature levels."""

from __future__ import annotations

import torch  # noqa: F401  (the examples below use it)
from torch import Tensor, nn
from torchvision.models.detection import fcos as tv_fcos
from torchvision.models.detection.anchor_utils import AnchorGenerator

from ...features import FeatureInfo
from ..registry import HEADS
from .parts import (
    Detections,
    _DenseHead,
    _LevelAnchors,
    _Unused,
)

__all__ = ["FCOSHead"]


@HEADS.register("fcos")
class FCOSHead(_DenseHead):
    """FCOS (anchor-free, one point per location) on the levels of stride >= 8 plus P6 and P7.

    torchvision's ``FCOSHead`` (4 convs with GroupNorm(32) per branch, centre-ness), its centre
    sampling and scale ranges, GIoU loss and post-processing. Anchors are one box per location whose size
    equals the level's stride, as FCOS's matching assumes.

    Args:
        feature_info: The neck's levels; the ones read need equal channels, a multiple of 32 (>= 64).
        num_classes: Real classes (sigmoid scores, no background class).
        num_convs: Convolutions per branch.
        center_sampling_radius: Positive locations lie within this many strides of a box centre.
        score_thresh: Minimum score of a detection (torchvision's FCOS uses 0.2; lower suits mAP).
        nms_thresh: IoU of class-wise NMS.
        detections_per_img: Detections kept per image (100: all that COCO mAP counts).
        topk_candidates: Candidates per level before NMS.

    Examples:
        >>> head = FCOSHead(FeatureInfo((64, 64), (8, 16)), num_classes=3).eval()
        >>> out = head([torch.randn(2, 64, 8, 8), torch.randn(2, 64, 4, 4)], input_size=(64, 64))
        >>> len(out), sorted(out[0]), head.strides
        (2, ['boxes', 'labels', 'scores'], [8, 16, 32, 64])
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        num_convs: int = 4,
        center_sampling_radius: float = 1.5,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        channels = self._setup(feature_info, 8, "fcos")
        if channels % 32 or channels < 64:
            # GroupNorm(32) on a 1x1 P7 map (small images) needs two channels per group to normalise
            raise ValueError(
                f"head 'fcos' normalises with GroupNorm(32 groups), so its levels need a multiple of 32 "
                f"channels, at least 64, got {channels}; use neck_kwargs={{'out_channels': 128}} (or 64)"
            )
        generator = AnchorGenerator(tuple((s,) for s in self.strides), ((1.0,),) * len(self.strides))
        self.detections_per_img = int(detections_per_img)
        self.detector = tv_fcos.FCOS(
            _Unused(channels),
            num_classes,
            anchor_generator=generator,
            head=tv_fcos.FCOSHead(channels, 1, num_classes, num_convs=num_convs),
            center_sampling_radius=center_sampling_radius,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
        )
        self.detector.transform = _Unused()
        self.anchors = _LevelAnchors(generator, self.strides)
        # torchvision starts the box distances at 0 behind a ReLU: a few adaptive steps (AdamW) that push
        # them negative leave the ReLU dead and the box loss stuck at 1. One stride per side starts alive.
        nn.init.constant_(self.detector.head.regression_head.bbox_reg.bias, 1.0)

    def losses(self, maps: list[Tensor], size: tuple[int, int], targets: Detections) -> dict[str, Tensor]:
        outputs, anchors, counts = self._outputs(maps, size)
        return self.detector.compute_loss(targets, outputs, anchors, counts)
