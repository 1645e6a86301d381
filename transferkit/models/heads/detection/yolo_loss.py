"""The YOLO head's training signal: points, box decoding, task-aligned assignment and the three losses.

- Every cell of every level is one point, at the cell's centre; a box is its distances to the four sides
  (left, top, right, bottom), in strides.
- `assign` is TOOD's task-aligned assignment: each true box takes the ``topk`` points inside it whose
  alignment ``score ** alpha * IoU ** beta`` is highest (score: the predicted probability of the box's
  class; IoU: of the predicted box), a point claimed by several boxes keeps the one its prediction
  overlaps most, and each point's target score is its alignment scaled so that the box's best point
  gets that point's IoU (a soft target: quality and class in one number).
- `yolo_losses`: BCE of every class logit against those soft targets (the quality focal idea of GFL
  without its focal factor), and for the assigned points the complete-IoU loss (torchvision's) and
  GFL's distribution focal loss over the ``reg_max`` bins, both weighted by the target scores and divided
  by their sum.

All of it is batched: targets are padded to the most boxes in the batch and masked, no loop over images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import complete_box_iou_loss

__all__ = ["assign", "cell_points", "decode", "pad_targets", "yolo_losses"]

_EPS = 1e-9


def cell_points(
    shapes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The centre ``[A, 2]`` (x, y pixels) and stride ``[A]`` of every cell, level by level, row-major.

    Examples:
        >>> points, strides = cell_points([(2, 2), (1, 1)], [8, 16], torch.device("cpu"))
        >>> points.tolist(), strides.tolist()
        ([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0], [8.0, 8.0]], [8.0, 8.0, 8.0, 8.0, 16.0])
    """
    centres, steps = [], []
    for (height, width), stride in zip(shapes, strides):
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
        steps.append(torch.full((height * width,), float(stride), device=device))
    return torch.cat(centres), torch.cat(steps)


def decode(points: Tensor, distances: Tensor) -> Tensor:
    """Boxes ``[..., A, 4]`` (x1, y1, x2, y2) from the points ``[A, 2]`` and pixel distances ``[..., A, 4]``.

    Examples:
        >>> decode(torch.tensor([[8.0, 8.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist()
        [[7.0, 6.0, 11.0, 12.0]]
    """
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def pad_targets(targets: Sequence[dict[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes ``[B, M, 4]``, labels ``[B, M]`` and a validity mask ``[B, M]``, M the most boxes of an image.

    Examples:
        >>> boxes, labels, valid = pad_targets(
        ...     [{"boxes": torch.ones(2, 4), "labels": torch.tensor([0, 1])},
        ...      {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
        ...     torch.device("cpu"))
        >>> boxes.shape, labels.tolist(), valid.tolist()
        (torch.Size([2, 2, 4]), [[0, 1], [0, 0]], [[True, True], [False, False]])
    """
    most = max((len(t["labels"]) for t in targets), default=0)
    boxes = torch.zeros(len(targets), most, 4, device=device)
    labels = torch.zeros(len(targets), most, dtype=torch.int64, device=device)
    valid = torch.zeros(len(targets), most, dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        count = len(target["labels"])
        boxes[i, :count] = target["boxes"].reshape(-1, 4).to(device, torch.float32)
        labels[i, :count] = target["labels"].to(device)
        valid[i, :count] = True
    return boxes, labels, valid


def _pairwise_iou(first: Tensor, second: Tensor) -> Tensor:
    """IoU ``[B, M, A]`` of the boxes ``[B, M, 4]`` with the boxes ``[B, A, 4]``."""
    low = torch.maximum(first[:, :, None, :2], second[:, None, :, :2])
    high = torch.minimum(first[:, :, None, 2:], second[:, None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area_first = (first[..., 2:] - first[..., :2]).clamp(min=0).prod(-1)
    area_second = (second[..., 2:] - second[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_first[:, :, None] + area_second[:, None, :] - inter + _EPS)


@torch.no_grad()
def assign(
    scores: Tensor,
    boxes: Tensor,
    points: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    topk: int = 10,
    alpha: float = 1.0,
    beta: float = 6.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Task-aligned targets for every point: ``(boxes [B, A, 4], soft scores [B, A, C], foreground [B, A])``.

    Args:
        scores: Predicted class probabilities ``[B, A, C]``.
        boxes: Predicted boxes ``[B, A, 4]``, pixels.
        points: Cell centres ``[A, 2]``.
        gt_boxes: True boxes ``[B, M, 4]`` (`pad_targets`).
        gt_labels: Their classes ``[B, M]``.
        gt_valid: Which of the M are real ``[B, M]``.
        topk: Points each true box takes (among those inside it).
        alpha: Weight of the class score in the alignment.
        beta: Weight of the IoU in the alignment.

    Examples:
        >>> points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [28.0, 28.0]])
        >>> pred = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0], [24.0, 24.0, 32.0, 32.0]]])
        >>> _, soft, fg = assign(torch.full((1, 3, 2), 0.5), pred, points,
        ...                      torch.tensor([[[0.0, 0.0, 16.0, 8.0]]]), torch.tensor([[1]]),
        ...                      torch.tensor([[True]]), topk=2)
        >>> fg.tolist(), [round(v, 4) for v in soft[0, :, 1].tolist()]  # each: score 0.5, IoU 0.5
        ([[True, True, False]], [0.5, 0.5, 0.0])
    """
    batch, count, classes = scores.shape
    if gt_boxes.shape[1] == 0:
        nothing = scores.new_zeros(batch, count, dtype=torch.bool)
        return torch.zeros_like(boxes), torch.zeros_like(scores), nothing
    gt_count = gt_boxes.shape[1]
    sides = torch.cat(
        [points[None, None] - gt_boxes[:, :, None, :2], gt_boxes[:, :, None, 2:] - points[None, None]], dim=-1
    )
    inside = (sides.amin(-1) > _EPS) & gt_valid[:, :, None]  # [B, M, A]
    iou = _pairwise_iou(gt_boxes, boxes) * inside
    score = scores.gather(2, gt_labels[:, None, :].expand(batch, count, gt_count)).transpose(1, 2)
    align = score.pow(alpha) * iou.pow(beta)
    ranked = align.masked_fill(~inside, -1.0).topk(min(topk, count), dim=-1).indices
    chosen = torch.zeros_like(inside).scatter_(-1, ranked, True) & inside
    # a point chosen by several boxes keeps the one its prediction overlaps most
    several = chosen.sum(1, keepdim=True) > 1
    best = iou.masked_fill(~chosen, -1.0).argmax(1)  # [B, A]
    best_only = F.one_hot(best, gt_count).transpose(1, 2).bool()
    chosen = torch.where(several, best_only & chosen, chosen)
    foreground = chosen.any(1)
    which = chosen.float().argmax(1)  # [B, A], the box of each foreground point
    target_boxes = gt_boxes.gather(1, which[..., None].expand(-1, -1, 4))
    target_labels = gt_labels.gather(1, which)
    align, iou = align * chosen, iou * chosen
    scale = iou.amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + _EPS)
    quality = (align * scale).amax(1) * foreground  # [B, A]
    target_scores = F.one_hot(target_labels, classes).to(scores.dtype) * quality[..., None]
    return target_boxes, target_scores, foreground


def _dfl(logits: Tensor, target: Tensor) -> Tensor:
    """GFL's distribution focal loss ``[P]``: logits ``[P, 4, R]``, target distances ``[P, 4]`` in strides."""
    bins = logits.shape[-1]
    target = target.clamp(0, bins - 1 - 0.01)
    left = target.floor().long()
    weight_left = left + 1 - target
    flat = logits.reshape(-1, bins)
    loss_left = F.cross_entropy(flat, left.reshape(-1), reduction="none").view_as(target)
    loss_right = F.cross_entropy(flat, (left + 1).reshape(-1), reduction="none").view_as(target)
    return (loss_left * weight_left + loss_right * (1 - weight_left)).mean(-1)


def yolo_losses(
    class_logits: Tensor,
    box_logits: Tensor,
    distances: Tensor,
    points: Tensor,
    strides: Tensor,
    targets: Sequence[dict[str, Tensor]],
    *,
    topk: int,
    alpha: float,
    beta: float,
    weights: tuple[float, float, float],
) -> dict[str, Tensor]:
    """``{"classification", "box_iou", "box_dfl"}`` (no ``box_dfl`` when R = 1), already weighted.

    Args:
        class_logits: ``[B, A, C]``.
        box_logits: ``[B, A, 4, R]`` (the distance distributions; R = 1: plain distances, no DFL).
        distances: The decoded distances ``[B, A, 4]``, in strides.
        points: Cell centres ``[A, 2]``.
        strides: Each point's stride ``[A]``.
        targets: One ``{"boxes", "labels"}`` per image.
        topk: See `assign`.
        alpha: See `assign`.
        beta: See `assign`.
        weights: Of the classification, complete-IoU and DFL losses.
    """
    class_logits, distances = class_logits.float(), distances.float()
    boxes = decode(points, distances * strides[:, None])
    gt_boxes, gt_labels, gt_valid = pad_targets(targets, class_logits.device)
    target_boxes, target_scores, foreground = assign(
        class_logits.detach().sigmoid(), boxes.detach(), points, gt_boxes, gt_labels, gt_valid,
        topk=topk, alpha=alpha, beta=beta,
    )  # fmt: skip
    total = target_scores.sum().clamp(min=1.0)
    classification = F.binary_cross_entropy_with_logits(class_logits, target_scores, reduction="sum") / total
    weight = target_scores.sum(-1)[foreground]
    box_iou = complete_box_iou_loss(boxes[foreground], target_boxes[foreground], reduction="none") * weight
    box_iou = box_iou.sum() / total
    cls_weight, iou_weight, dfl_weight = weights
    losses = {"classification": classification * cls_weight, "box_iou": box_iou * iou_weight}
    if box_logits.shape[-1] > 1:  # distributions over bins; plain distances (R = 1) have no DFL
        point = points[None].expand(len(foreground), -1, -1)[foreground]
        step = strides[None].expand_as(foreground)[foreground][:, None]
        box = target_boxes[foreground]
        wanted = torch.cat([point - box[:, :2], box[:, 2:] - point], dim=1)
        box_dfl = (_dfl(box_logits[foreground].float(), wanted / step) * weight).sum() / total
        losses["box_dfl"] = box_dfl * dfl_weight
    return losses
