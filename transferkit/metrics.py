"""Epoch-level metrics: top-k accuracy for classification, confusion-matrix mIoU for segmentation.

The meters accumulate integer counts (never per-batch averages), so an epoch's value does not depend on
how the data was batched, and the counts are plain tensors that a distributed trainer can sum across
ranks with ``torch.distributed.all_reduce`` before calling ``compute()``.

Examples:
    >>> meter = ClassificationMeter(num_classes=10)
    >>> meter.update(torch.randn(8, 10), torch.randint(0, 10, (8,)))
    >>> sorted(meter.compute())
    ['acc', 'top5']
    >>> seg = SegmentationMeter(num_classes=3)
    >>> seg.update(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    >>> sorted(seg.compute())
    ['acc', 'miou']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "ClassificationMeter",
    "SegmentationMeter",
    "accuracy",
    "confusion_matrix",
    "iou_from_confusion",
    "miou_from_confusion",
]


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_integer(name: str, t: Tensor) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}; pass class indices.")


def _check_range(name: str, values: Tensor, num_classes: int) -> None:
    if values.numel() == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), found values in [{low}, {high}]; "
            f"check num_classes ({num_classes}) and the labels."
        )


def _check_classification(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits [N, K] and targets [N], got logits {_shape(logits)} and targets "
            f"{_shape(targets)}."
        )
    _check_integer("targets", targets)
    _check_range("targets", targets, logits.shape[1])


def _topk_correct(logits: Tensor, targets: Tensor, topk: Sequence[int]) -> Tensor:
    """Counts, for each k in ``topk``, the samples whose target is among the k highest logits."""
    num_classes = logits.shape[1]
    for k in topk:
        if not 1 <= k <= num_classes:
            raise ValueError(f"top-k needs 1 <= k <= num_classes ({num_classes}), got k={k}.")
    top = logits.topk(max(topk), dim=1).indices
    # A target appears at most once in a row, so the running sum marks "hit within the first k".
    hit_within = top.eq(targets[:, None]).cumsum(dim=1)
    return torch.stack([hit_within[:, k - 1].sum() for k in topk])


def accuracy(logits: Tensor, targets: Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracy of one batch, as fractions in [0, 1].

    Args:
        logits: Scores ``[N, K]``.
        targets: Class indices ``[N]`` in ``[0, K)``.
        topk: The k values to report, each in ``[1, K]``.

    Returns:
        One accuracy per entry of ``topk``, in the same order.

    Raises:
        ValueError: On mismatched shapes, an empty batch, targets out of range or k out of range.
        TypeError: If ``targets`` does not hold integers.

    Examples:
        >>> logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])  # [2, 3]
        >>> accuracy(logits, torch.tensor([1, 2]), topk=(1, 3))
        [0.5, 1.0]
    """
    _check_classification(logits, targets)
    if targets.numel() == 0:
        raise ValueError("accuracy of an empty batch is undefined; pass at least one sample.")
    correct = _topk_correct(logits, targets, topk)
    return [c / targets.numel() for c in correct.tolist()]


class ClassificationMeter:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy accumulated over an epoch.

    ``counts`` is a long tensor ``[top1_correct, top5_correct, seen]``. Under DDP, ``all_reduce`` it
    (sum) before ``compute()``; pass ``num_classes`` so every rank agrees on whether top-5 is reported,
    and ``device`` so the tensor lives where the collective backend wants it (CUDA for NCCL).

    Args:
        num_classes: K. When None it is taken from the first ``update``.
        device: Where ``counts`` lives; updates are moved there.

    Examples:
        >>> meter = ClassificationMeter()
        >>> meter.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))  # [2, 2], [2]
        >>> meter.compute()
        {'acc': 0.5}
        >>> meter.counts
        tensor([1, 0, 2])
    """

    def __init__(self, num_classes: int | None = None, device: torch.device | str | None = None) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.counts = torch.zeros(3, dtype=torch.long, device=device)

    @property
    def state(self) -> tuple[Tensor, ...]:
        """The tensors to sum across processes before ``compute()``: ``(counts,)``."""
        return (self.counts,)

    @property
    def _reports_top5(self) -> bool:
        return self.num_classes is not None and self.num_classes > 5

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Adds a batch of logits ``[N, K]`` and class indices ``[N]``."""
        _check_classification(logits, targets)
        if self.num_classes is None:
            self.num_classes = logits.shape[1]
        elif logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits {_shape(logits)} have {logits.shape[1]} classes but the meter counts "
                f"{self.num_classes}; use one meter per model."
            )
        topk = (1, 5) if self._reports_top5 else (1,)
        correct = _topk_correct(logits.detach(), targets, topk).to(self.counts.device)
        self.counts[: len(topk)] += correct
        self.counts[2] += targets.numel()

    def compute(self) -> dict[str, float]:
        """Returns ``{"acc": ...}`` plus ``"top5"`` when K > 5, as fractions in [0, 1]."""
        top1, top5, seen = self.counts.tolist()
        if seen == 0:
            raise ValueError("ClassificationMeter has seen no samples; call update() before compute().")
        metrics = {"acc": top1 / seen}
        if self._reports_top5:
            metrics["top5"] = top5 / seen
        return metrics

    def reset(self) -> None:
        """Zeroes the counts for a new epoch (``num_classes`` is kept)."""
        self.counts.zero_()


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion matrix of predicted against true class indices.

    Args:
        preds: Predicted class indices, any shape.
        targets: True class indices, same shape as ``preds``; ``ignore_index`` entries are skipped.
        num_classes: K.
        ignore_index: Target value that marks pixels to leave out.

    Returns:
        ``[K, K]`` int64 tensor on the inputs' device; entry ``[t, p]`` counts targets ``t`` predicted
        as ``p`` (rows are the truth).

    Raises:
        ValueError: On mismatched shapes or class indices outside ``[0, K)``.
        TypeError: On non-integer inputs.

    Examples:
        >>> confusion_matrix(torch.tensor([[0, 2]]), torch.tensor([[0, 1]]), num_classes=3)  # [1, 2]
        tensor([[1, 0, 0],
                [0, 0, 1],
                [0, 0, 0]])
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if preds.shape != targets.shape:
        raise ValueError(
            f"preds {_shape(preds)} and targets {_shape(targets)} must have the same shape; for "
            "segmentation pass argmax(logits, dim=1) [N, H, W] and masks [N, H, W]."
        )
    _check_integer("preds", preds)
    _check_integer("targets", targets)
    keep = targets != ignore_index
    preds, targets = preds[keep].long(), targets[keep].long()
    _check_range("targets (outside ignore_index)", targets, num_classes)
    _check_range("preds", preds, num_classes)
    flat = torch.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def iou_from_confusion(cm: Tensor) -> Tensor:
    """Per-class intersection over union from a confusion matrix ``[K, K]`` (rows are the truth).

    Returns:
        float64 ``[K]``; NaN for classes absent from both targets and predictions (union 0).

    Examples:
        >>> iou_from_confusion(torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 1]]))  # [3, 3]
        tensor([1.0000, 0.0000, 0.3333], dtype=torch.float64)
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square [K, K], got {_shape(cm)}.")
    cm = cm.double()
    intersection = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.nan)


def miou_from_confusion(cm: Tensor) -> float:
    """Mean IoU over the classes present in targets or predictions (union > 0).

    Raises:
        ValueError: If the matrix is empty (no counted pixels).

    Examples:
        >>> miou_from_confusion(torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 1]]))  # (1 + 0 + 1/3) / 3
        0.4444444444444444
    """
    iou = iou_from_confusion(cm)
    present = ~iou.isnan()
    if not present.any():
        raise ValueError("the confusion matrix is empty; mIoU needs at least one non-ignored pixel.")
    return iou[present].mean().item()


class SegmentationMeter:
    """Mean IoU and pixel accuracy accumulated over an epoch through a confusion matrix.

    ``confmat`` is the int64 ``[K, K]`` confusion matrix (rows are the truth); under DDP,
    ``all_reduce`` it (sum) before ``compute()``.

    Args:
        num_classes: K, including the background class.
        ignore_index: Target value that marks pixels to leave out.
        device: Where ``confmat`` lives; updates are moved there.

    Examples:
        >>> meter = SegmentationMeter(num_classes=3)
        >>> meter.update(torch.tensor([[[0, 2], [2, 1]]]), torch.tensor([[[0, 1], [2, 2]]]))  # [1, 2, 2]
        >>> meter.compute()
        {'miou': 0.4444444444444444, 'acc': 0.5}
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confmat = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    @property
    def state(self) -> tuple[Tensor, ...]:
        """The tensors to sum across processes before ``compute()``: ``(confmat,)``."""
        return (self.confmat,)

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        """Adds a batch.

        Args:
            outputs: Logits ``[N, K, H, W]`` or predicted class indices ``[N, H, W]``.
            targets: Masks ``[N, H, W]`` of class indices, ``ignore_index`` for pixels to skip.
        """
        if outputs.ndim == 4:
            if outputs.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits {_shape(outputs)} have {outputs.shape[1]} channels but the meter counts "
                    f"{self.num_classes} classes; expected [N, {self.num_classes}, H, W]."
                )
            preds = outputs.detach().argmax(dim=1)
        elif outputs.ndim == 3:
            preds = outputs
        else:
            raise ValueError(f"expected logits [N, K, H, W] or predictions [N, H, W], got {_shape(outputs)}.")
        if preds.shape != targets.shape:
            raise ValueError(
                f"outputs {_shape(outputs)} do not match targets {_shape(targets)}; expected masks "
                "[N, H, W] at the outputs' resolution."
            )
        cm = confusion_matrix(preds, targets, self.num_classes, self.ignore_index)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> dict[str, float]:
        """Returns ``{"miou": ..., "acc": ...}``; acc is pixel accuracy over non-ignored pixels."""
        total = int(self.confmat.sum())
        if total == 0:
            raise ValueError(
                "SegmentationMeter has counted no pixels; call update() with non-ignored targets first."
            )
        return {
            "miou": miou_from_confusion(self.confmat),
            "acc": int(self.confmat.diagonal().sum()) / total,
        }

    def reset(self) -> None:
        """Zeroes the confusion matrix for a new epoch."""
        self.confmat.zero_()
