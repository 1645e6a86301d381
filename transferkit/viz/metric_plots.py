"""Per-class results as pictures: a confusion matrix (classification, per image; segmentation, per pixel)
and per-class IoU bars (segmentation).

Both run the model over a loader in eval mode without gradients, count a confusion matrix with
`transferkit.tasks.metrics.confusion_matrix` (rows are the truth), and draw it.

Examples:
    >>> plot_confusion_matrix(model, loaders["val"], "runs/ab/confusion.png")  # doctest: +SKIP
    >>> plot_class_iou(segmenter, loaders["val"], "runs/seg/class_iou.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..tasks.metrics import confusion_matrix, iou_from_confusion
from .plots import _class_names, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["count_confusion", "plot_class_iou", "plot_confusion_matrix"]


@torch.no_grad()
def count_confusion(model: nn.Module, loader: Iterable[Any]) -> Tensor:
    """The ``[K, K]`` confusion matrix of ``model`` over ``loader`` (per image, or per pixel for masks).

    Examples:
        >>> cm = count_confusion(model, loaders["val"])  # doctest: +SKIP
        >>> cm.shape, int(cm.sum())  # 3 classes, 60 val images
        (torch.Size([3, 3]), 60)
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        raise TypeError(f"{type(model).__name__} has no num_classes; pass a TransferModel")
    num_classes = int(num_classes)
    total = torch.zeros(num_classes, num_classes, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("a confusion matrix needs (inputs, targets) batches")
            inputs, targets = batch[0], torch.as_tensor(batch[1])
            if targets.is_floating_point():
                raise ValueError("a confusion matrix needs class indices as targets, not probabilities")
            preds = model(inputs.to(device)).argmax(1).cpu()
            total += confusion_matrix(preds, targets.reshape(preds.shape).long(), num_classes)
    finally:
        model.train(was_training)
    return total


def plot_confusion_matrix(
    model: nn.Module,
    loader: Iterable[Any],
    path: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
    normalize: bool = True,
) -> Figure:
    """A heat map of true (rows) against predicted (columns) classes, each cell labelled with its count.

    Args:
        model: A classification or segmentation model.
        loader: ``(inputs, targets)`` batches (class indices, or masks with 255 = ignore).
        path: Where to write the PNG; None only returns the figure.
        classes: Class names (default ``model.classes``, then the dataset's).
        normalize: Colour each row by the fraction of its true class (the counts are still printed).

    Returns:
        The matplotlib ``Figure``.
    """
    cm = count_confusion(model, loader)
    names = _class_names(classes, model, loader, cm.shape[0])
    counts = cm.numpy()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalize else counts
    size = max(4.0, 0.55 * len(names) + 2.5)
    fig = new_figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="fraction of the true class" if normalize else "count", shrink=0.8)
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 25:
        for i in ticks:
            for j in ticks:
                dark = shares[i, j] > (0.5 if normalize else shares.max() / 2)
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if dark else "black")
    right = int(np.trace(counts))
    ax.set_title(
        f"confusion matrix: {right} of {int(counts.sum())} right ({right / max(counts.sum(), 1):.1%})"
    )
    save_figure(fig, path)
    return fig


def plot_class_iou(
    model: nn.Module,
    loader: Iterable[Any],
    path: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
) -> Figure:
    """Horizontal bars of each class's IoU over ``loader``, with the mean IoU as a dashed line.

    Classes absent from both targets and predictions have no IoU and are marked "absent".
    """
    cm = count_confusion(model, loader)
    names = _class_names(classes, model, loader, cm.shape[0])
    iou = iou_from_confusion(cm).numpy()
    present = ~np.isnan(iou)
    fig = new_figure(figsize=(7, max(2.5, 0.4 * len(names) + 1.2)))
    ax = fig.subplots()
    rows = np.arange(len(names))
    ax.barh(rows, np.where(present, iou, 0), color="#4c72b0")
    for row, value, ok in zip(range(len(names)), iou, present, strict=True):
        ax.text(min(value, 0.98) if ok else 0.01, row, f" {value:.2f}" if ok else " absent", va="center")
    mean = float(iou[present].mean()) if present.any() else float("nan")
    ax.axvline(mean, color="#cf222e", linestyle="--", label=f"mIoU {mean:.3f}")
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.legend(loc="lower right")
    ax.set_title("IoU per class")
    save_figure(fig, path)
    return fig
