"""Epoch-level metrics: top-k accuracy for classification, confusion-matrix mIoU for segmentation.

The meters accumulate integer counts (never per-batch averages) in torchmetrics metrics, so an epoch's
value does not depend on how the data was batched, and ``compute()`` sums the counts over every process
of ``torch.distributed`` itself (torchmetrics' sync) before the fractions are taken, in float64.

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
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torchmetrics import Metric

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
    """Counts, for each k in ``topk``, the samples whose target is among the k highest logits (top-1: the
    argmax, the first of tied maxima, as ``predict`` and the confusion matrix take it)."""
    from torchmetrics.functional.classification import multiclass_stat_scores

    num_classes = logits.shape[1]
    for k in topk:
        if not 1 <= k <= num_classes:
            raise ValueError(f"top-k needs 1 <= k <= num_classes ({num_classes}), got k={k}.")
    scores = [
        multiclass_stat_scores(logits, targets, num_classes, average="micro", top_k=k, validate_args=False)
        for k in topk
    ]  # [tp, fp, tn, fn, support] each
    return torch.stack([s[0] for s in scores])


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

    The counts live in torchmetrics' ``MulticlassStatScores`` (micro average, ``top_k`` 1 and 5: the
    integer counts behind ``MulticlassAccuracy``), which ``compute()`` sums over every process of
    ``torch.distributed`` when it is initialised, so every process must call it. Pass ``num_classes``
    so every process agrees on whether top-5 is reported, and ``device`` so the counts live where the
    collective backend wants them (CUDA for NCCL).

    Args:
        num_classes: K. When None it is taken from the first ``update``.
        device: Where the counts live; updates are moved there.

    Examples:
        >>> meter = ClassificationMeter()
        >>> meter.update(torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))  # [2, 2], [2]
        >>> meter.compute()
        {'acc': 0.5}
        >>> meter.counts  # this process's [top1_correct, top5_correct, seen]
        tensor([1, 0, 2])
    """

    state: tuple[Tensor, ...] = ()  # nothing for the Trainer to sum: torchmetrics syncs the counts

    def __init__(self, num_classes: int | None = None, device: torch.device | str | None = None) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.device = torch.device(device or "cpu")
        self._scores: list[Metric] = []  # top-1, then top-5 when reported; built once K is known
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        from torchmetrics.classification import MulticlassStatScores

        self.num_classes = num_classes
        self._scores = [
            MulticlassStatScores(num_classes, top_k=k, average="micro", validate_args=False).to(self.device)
            for k in ((1, 5) if num_classes > 5 else (1,))
        ]

    @property
    def counts(self) -> Tensor:
        """This process's ``[top1_correct, top5_correct, seen]`` (long), before any syncing."""
        if not self._scores:
            return torch.zeros(3, dtype=torch.long, device=self.device)
        states = [scores.metric_state for scores in self._scores]  # tp, fp, tn, fn: micro sums
        correct = [torch.as_tensor(state["tp"]).sum() for state in states]
        seen = correct[0] + torch.as_tensor(states[0]["fn"]).sum()
        return torch.stack([correct[0], correct[-1] if len(correct) > 1 else torch.zeros_like(seen), seen])

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Adds a batch of logits ``[N, K]`` and class indices ``[N]``."""
        _check_classification(logits, targets)
        if self.num_classes is None:
            self._build(logits.shape[1])
        elif logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits {_shape(logits)} have {logits.shape[1]} classes but the meter counts "
                f"{self.num_classes}; use one meter per model."
            )
        logits, targets = logits.detach().to(self.device), targets.to(self.device)
        for scores in self._scores:
            scores.update(logits, targets)

    def compute(self) -> dict[str, float]:
        """Returns ``{"acc": ...}`` plus ``"top5"`` when K > 5, as fractions in [0, 1], over every process."""
        from .metric_sync import synced_compute

        # [tp, fp, tn, fn, support] per metric, summed over processes: integer counts, exact fractions
        counts = [synced_compute(scores).tolist() for scores in self._scores]
        seen = counts[0][4] if counts else 0
        if seen == 0:
            raise ValueError("ClassificationMeter has seen no samples; call update() before compute().")
        metrics = {"acc": counts[0][0] / seen}
        if len(counts) > 1:
            metrics["top5"] = counts[1][0] / seen
        return metrics

    def reset(self) -> None:
        """Zeroes the counts for a new epoch (``num_classes`` is kept)."""
        for scores in self._scores:
            scores.reset()


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

    The matrix lives in a torchmetrics ``MulticlassConfusionMatrix`` (`transferkit.tasks.metric_sync`), which
    ``compute()`` sums over every process of ``torch.distributed`` when it is initialised, so every
    process must call it. mIoU is the mean over the classes present in the targets or the predictions
    (`miou_from_confusion`); pixels whose target is ``ignore_index`` are left out of both values.

    Args:
        num_classes: K, including the background class.
        ignore_index: Target value that marks pixels to leave out.
        device: Where the matrix lives; updates are moved there.

    Examples:
        >>> meter = SegmentationMeter(num_classes=3)
        >>> meter.update(torch.tensor([[[0, 2], [2, 1]]]), torch.tensor([[[0, 1], [2, 2]]]))  # [1, 2, 2]
        >>> meter.compute()
        {'miou': 0.4444444444444444, 'acc': 0.5}
    """

    state: tuple[Tensor, ...] = ()  # nothing for the Trainer to sum: torchmetrics syncs the matrix

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None
    ) -> None:
        from .metric_sync import ConfusionCounts

        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        counts = ConfusionCounts(num_classes, ignore_index, count=confusion_matrix)
        self._counts = counts.to(torch.device(device or "cpu"))

    @property
    def confmat(self) -> Tensor:
        """This process's int64 ``[K, K]`` confusion matrix (rows are the truth), before any syncing."""
        return self._counts.confmat

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
        self._counts.update(preds, targets)

    def compute(self) -> dict[str, float]:
        """Returns ``{"miou": ..., "acc": ...}`` over every process; acc is pixel accuracy over
        non-ignored pixels."""
        from .metric_sync import synced_compute

        confmat = synced_compute(self._counts)
        total = int(confmat.sum())
        if total == 0:
            raise ValueError(
                "SegmentationMeter has counted no pixels; call update() with non-ignored targets first."
            )
        return {"miou": miou_from_confusion(confmat), "acc": int(confmat.diagonal().sum()) / total}

    def reset(self) -> None:
        """Zeroes the confusion matrix for a new epoch."""
        self._counts.reset()
