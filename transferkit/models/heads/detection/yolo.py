"""The YOLO head: an anchor-free single-stage detector with decoupled per-level branches.

One point per cell of each level the head reads (strides 8, 16, 32 on a CNN). Per level, a box branch and
a class branch (a few 3x3 convolutions with GroupNorm and SiLU, then a 1x1 prediction), as the decoupled
heads of YOLOX and YOLOv8 describe them; the levels do not share weights, so they may have different
channels (``neck="identity"`` works). A box is four distances (left, top, right, bottom) from the point,
each a distribution over ``reg_max`` bins of one stride (GFL); ``reg_max=1`` predicts plain distances.
Training targets come from TOOD's task-aligned assignment; the losses are BCE on the soft targets,
complete IoU and the distribution focal loss (`transferkit.models.heads.detection.yolo_loss`).

Post-processing is batched and of fixed size: the ``topk_candidates`` best (point, class) scores per
image, those of at least ``score_thresh``, class-wise NMS over the whole batch at once (the image is part
of the class), then the ``detections_per_img`` best. `YOLOHead.detect_fixed` returns that as tensors
``[B, D, 4]``, ``[B, D]``, ``[B, D]`` and a count ``[B]``, which is what an exported file gives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ...features import FeatureInfo
from ..registry import HEADS
from .parts import DetectionHead, Detections, _class_wise_nms, detection_levels
from .yolo_loss import cell_points, decode, yolo_losses

__all__ = ["YOLOHead"]

_MIN_STRIDE = 8


def _branch(channels: int, width: int, depth: int, bias: Tensor) -> nn.Sequential:
    """``depth`` 3x3 convolutions (GroupNorm as in GFL and TOOD, SiLU), then a 1x1 one with ``bias``."""
    layers: list[nn.Module] = [
        Conv2dNormActivation(c, width, 3, norm_layer=_group_norm, activation_layer=nn.SiLU)
        for c in [channels, *[width] * (depth - 1)][:depth]
    ]
    predict = nn.Conv2d(width if depth else channels, len(bias), 1)
    predict.bias = nn.Parameter(bias.clone())
    return nn.Sequential(*layers, predict)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 32), channels)


@HEADS.register("yolo")
class YOLOHead(DetectionHead):
    """YOLO-style detector on the levels of stride >= 8: decoupled branches, DFL boxes, task-aligned targets.

    Args:
        feature_info: The neck's levels; those read need two or more strides (a pyramid), any channels.
        num_classes: Real classes (sigmoid scores, no background class).
        width: Channels of each branch's convolutions; default the read levels' smallest channel count,
            rounded to a multiple of 32 within [64, 256].
        depth: 3x3 convolutions per branch.
        reg_max: Bins of each side's distance distribution (one stride each; reach ``reg_max - 1``
            strides); 1 predicts the distances directly (no DFL).
        topk: Points each true box takes in the assignment.
        alpha: Weight of the class score in the alignment ``score ** alpha * IoU ** beta``.
        beta: Weight of the IoU in the alignment.
        prior: Initial probability of every class (the class bias), as in RetinaNet.
        loss_weights: Of the classification, complete-IoU and DFL losses (GFL's: 1, 2, 0.25).
        score_thresh: Minimum score of a detection.
        nms_thresh: IoU of class-wise NMS.
        detections_per_img: Detections kept per image (100: all that COCO mAP counts).
        topk_candidates: Candidates per image before NMS.

    Examples:
        >>> head = YOLOHead(FeatureInfo((32, 64), (8, 16)), num_classes=3)
        >>> feats = [torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)]
        >>> targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([2])}] * 2
        >>> sorted(head(feats, (64, 64), targets))
        ['box_dfl', 'box_iou', 'classification']
        >>> boxes, scores, labels, count = head.eval().detect_fixed(feats, (64, 64))
        >>> boxes.shape, scores.shape, labels.shape, count.shape
        (torch.Size([2, 100, 4]), torch.Size([2, 100]), torch.Size([2, 100]), torch.Size([2]))
    """

    export_limit = None  # the post-processing treats the whole batch at once: any batch size, every format

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        width: int | None = None,
        depth: int = 2,
        reg_max: int = 16,
        topk: int = 10,
        alpha: float = 1.0,
        beta: float = 6.0,
        prior: float = 0.01,
        loss_weights: tuple[float, float, float] = (1.0, 2.0, 0.25),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        self.levels = detection_levels(feature_info, _MIN_STRIDE)
        self.strides = [feature_info.reductions[i] for i in self.levels]
        if len(self.levels) < 2:
            raise ValueError(
                f"head 'yolo' predicts on a pyramid of strides (8, 16, 32), but the features give one level "
                f"of stride {self.strides[0]} (reductions {list(feature_info.reductions)}); use a backbone "
                "with several stages (a CNN such as resnet18 or convnext) and all its levels "
                "(out_indices=None), neck='simple_pyramid' (strides 4 to 32 from the coarsest level), or "
                "head='fcos', which adds its own coarse levels"
            )
        channels = [feature_info.channels[i] for i in self.levels]
        if width is None:
            width = min(256, max(64, 32 * round(min(channels) / 32)))
        sizes = {"width": (width, 1), "depth": (depth, 0), "reg_max": (reg_max, 1), "topk": (topk, 1)}
        for name, (value, low) in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"head 'yolo' takes {name} as an int >= {low}, got {value!r}")
        if not 0 < prior < 1:
            raise ValueError(f"head 'yolo' takes prior as a probability in (0, 1), got {prior!r}")
        self.extra = None
        self.num_classes, self.reg_max = num_classes, reg_max
        self.topk, self.alpha, self.beta = topk, float(alpha), float(beta)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.detections_per_img, self.topk_candidates = int(detections_per_img), int(topk_candidates)
        self.bins: Tensor
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32), persistent=False)
        # every side starts about 1.5 strides out, so the first boxes are of their level's scale
        side = -0.5 * self.bins if reg_max > 1 else torch.tensor([math.log(math.expm1(1.5))])
        class_bias = torch.full((num_classes,), -math.log((1 - prior) / prior))
        self.box_branches = nn.ModuleList(_branch(c, width, depth, side.repeat(4)) for c in channels)
        self.class_branches = nn.ModuleList(_branch(c, width, depth, class_bias) for c in channels)

    def _predict(self, maps: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Class logits ``[B, A, C]``, box logits ``[B, A, 4, R]``, distances in strides ``[B, A, 4]``,
        the cell centres ``[A, 2]`` and strides ``[A]``."""
        batch = maps[0].shape[0]
        class_logits = torch.cat([b(m).flatten(2) for b, m in zip(self.class_branches, maps)], dim=2)
        box_logits = torch.cat([b(m).flatten(2) for b, m in zip(self.box_branches, maps)], dim=2)
        # transpose, not .mT, and no in-place &= below: the TorchScript-based ONNX exporter knows neither
        class_logits, box_logits = class_logits.transpose(1, 2), box_logits.transpose(1, 2)
        box_logits = box_logits.reshape(batch, -1, 4, self.reg_max)
        if self.reg_max > 1:
            distances = box_logits.float().softmax(-1) @ self.bins
        else:
            distances = nn.functional.softplus(box_logits.float().squeeze(-1))
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        points, strides = cell_points(shapes, self.strides, maps[0].device)
        return class_logits, box_logits, distances, points, strides

    def losses(self, maps: list[Tensor], size: tuple[int, int], targets: Detections) -> dict[str, Tensor]:
        class_logits, box_logits, distances, points, strides = self._predict(maps)
        return yolo_losses(
            class_logits, box_logits, distances, points, strides, targets,
            topk=self.topk, alpha=self.alpha, beta=self.beta, weights=self.loss_weights,  # type: ignore[arg-type]
        )  # fmt: skip

    def detect_fixed(self, features: list[Tensor], input_size: tuple[int, int]) -> tuple[Tensor, ...]:
        """Detections as fixed-size tensors: boxes ``[B, D, 4]``, scores ``[B, D]``, labels ``[B, D]``,
        count ``[B]`` (the first ``count`` rows of each image are its detections, best first; the rest 0).

        ``features`` are the neck's levels (all of them, as the head's ``forward`` takes them).
        """
        return self._fixed(self._pyramid(features), input_size)

    def _fixed(self, maps: list[Tensor], size: tuple[int, int]) -> tuple[Tensor, ...]:
        class_logits, _, distances, points, strides = self._predict(maps)
        batch, count, classes = class_logits.shape
        boxes = decode(points, distances * strides[:, None])
        limit = boxes.new_tensor([size[1], size[0], size[1], size[0]])
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        probabilities = class_logits.float().sigmoid().flatten(1)
        scores, index = probabilities.topk(min(self.topk_candidates, count * classes))
        labels = index % classes
        boxes = boxes.gather(1, (index // classes)[..., None].expand(-1, -1, 4))
        candidates = scores.shape[1]
        picked = (scores >= self.score_thresh).flatten().nonzero().squeeze(1)
        image = torch.arange(batch, device=boxes.device)[:, None].expand(-1, candidates).flatten()
        kept = _class_wise_nms(
            boxes.reshape(-1, 4)[picked], scores.flatten()[picked],
            image[picked], labels.flatten()[picked], size, self.nms_thresh,
        )  # fmt: skip
        keep = torch.zeros(batch * candidates, dtype=torch.bool, device=boxes.device)
        keep[picked[kept]] = True
        keep = keep.view(batch, candidates)
        rank = keep.long().cumsum(1) - 1  # candidates are best first, so the kept ones stay in order
        keep = keep & (rank < self.detections_per_img)
        slot = torch.where(keep, rank, torch.full_like(rank, self.detections_per_img))
        width = self.detections_per_img + 1  # the last column takes what is dropped
        out_boxes = boxes.new_zeros(batch, width, 4).scatter(1, slot[..., None].expand(-1, -1, 4), boxes)
        out_scores = scores.new_zeros(batch, width).scatter(1, slot, scores)
        out_labels = labels.new_zeros(batch, width).scatter(1, slot, labels)
        return out_boxes[:, :-1], out_scores[:, :-1], out_labels[:, :-1], keep.sum(1)

    def detect(self, maps: list[Tensor], size: tuple[int, int]) -> Detections:
        boxes, scores, labels, count = self._fixed(maps, size)
        return [
            {"boxes": b[:n], "scores": s[:n], "labels": label[:n]}
            for b, s, label, n in zip(boxes, scores, labels, count.tolist())
        ]
