"""Detection heads: torchvision's FCOS, RetinaNet, Faster R-CNN and SSDLite on transferkit's features.

Each head builds torchvision's own parts (prediction heads, anchor generators, box coders, matchers,
losses, RPN and RoI heads, post-processing) and is only the glue between them and the neck's levels:

- it picks the levels it reads (``levels``) and adds the coarse ones torchvision's model expects (P6/P7
  convolutions, or Faster R-CNN's max-pool level);
- anchors come from the levels' strides in ``feature_info``, never from ``image size // map size``
  (which drifts on sizes that are not a multiple of the coarsest stride), and Faster R-CNN's RoI pooling
  scales are set from the same strides instead of being guessed from the first batch;
- ``num_classes`` counts the real classes; where torchvision's softmax keeps class 0 for the background
  (Faster R-CNN, SSDLite) the head shifts the labels on the way in and back on the way out;
- there is no ``GeneralizedRCNNTransform``: images arrive resized and normalised (once) by transferkit's
  data pipeline, so boxes are in the input tensor's pixels, in and out.

A head is called as ``head(features, input_size, targets=None)``. In training mode it takes targets (a list
of ``{"boxes": [M, 4] xyxy pixels, "labels": [M]}``, M may be 0) and returns torchvision's loss dict; in eval
mode it returns one ``{"boxes" [D, 4], "scores" [D], "labels" [D]}`` per image, boxes clipped to the input.
The torchvision model objects are kept for their loss and post-processing methods only; their ``forward``
(with its resize to 800 px and second normalisation) is never called.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import fcos as tv_fcos
from torchvision.models.detection import retinanet as tv_retinanet
from torchvision.models.detection import ssd as tv_ssd
from torchvision.models.detection import ssdlite as tv_ssdlite
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.poolers import LevelMapper

from ..features import FeatureInfo
from .detection_parts import (
    DetectionHead,
    Detections,
    _DenseHead,
    _images,
    _LevelAnchors,
    _shared_channels,
    _Unused,
    detection_levels,
)
from .registry import HEADS

__all__ = ["FCOSHead", "FasterRCNNHead", "RetinaNetHead", "SSDLiteHead"]


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
