"""The RetinaNet head: torchvision's RetinaNet parts on transferkit's feature levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (the examples below use it)
from torch import Tensor
from torchvision.models.detection import retinanet as tv_retinanet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from ...features import FeatureInfo
from ..registry import HEADS
from .parts import (
    Detections,
    _DenseHead,
    _LevelAnchors,
    _Unused,
)

__all__ = ["RetinaNetHead"]


@HEADS.register("retinanet")
class RetinaNetHead(_DenseHead):
    """RetinaNet on the levels of stride >= 8 plus P6 and P7: torchvision's head, focal loss, matcher, NMS.

    Anchors follow torchvision's: three scales per octave and three aspect ratios per location, the
    smallest ``anchor_scale`` times the level's stride (torchvision: 32 px at stride 8).

    Args:
        feature_info: The neck's levels; the ones read need equal channels.
        num_classes: Real classes (sigmoid scores, no background class).
        anchor_scale: Smallest anchor side per level, in strides.
        aspect_ratios: Anchor height / width ratios.
        fg_iou_thresh: IoU from which an anchor is a positive.
        bg_iou_thresh: IoU below which an anchor is background (between the two: ignored).
        score_thresh: Minimum score of a detection.
        nms_thresh: IoU of class-wise NMS.
        detections_per_img: Detections kept per image (100: all that COCO mAP counts).
        topk_candidates: Candidates per level before NMS.

    Examples:
        >>> head = RetinaNetHead(FeatureInfo((32, 32), (8, 16)), num_classes=3)
        >>> feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
        >>> targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])}] * 2
        >>> sorted(head(feats, (64, 64), targets))
        ['bbox_regression', 'classification']
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        anchor_scale: float = 4.0,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        channels = self._setup(feature_info, 8, "retinanet")
        sizes = tuple(tuple(anchor_scale * s * 2 ** (i / 3) for i in range(3)) for s in self.strides)
        generator = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
        head = tv_retinanet.RetinaNetHead(channels, generator.num_anchors_per_location()[0], num_classes)
        self.detections_per_img = int(detections_per_img)
        self.detector = tv_retinanet.RetinaNet(
            _Unused(channels),
            num_classes,
            anchor_generator=generator,
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            fg_iou_thresh=fg_iou_thresh,
            bg_iou_thresh=bg_iou_thresh,
            topk_candidates=topk_candidates,
        )
        self.detector.transform = _Unused()
        self.anchors = _LevelAnchors(generator, self.strides)

    def losses(self, maps: list[Tensor], size: tuple[int, int], targets: Detections) -> dict[str, Tensor]:
        outputs, anchors, _ = self._outputs(maps, size)
        return self.detector.compute_loss(targets, outputs, anchors)
