"""Where a segmentation model goes wrong: the images with the lowest IoU, and the IoU of each class.

`interpret_segmentation` runs the model once over a loader (`transferkit.interpret.stream.stream`). Per
image it keeps two scalars, its IoU and its pixel accuracy; per class, the task's own confusion matrix
(`transferkit.tasks.metrics.SegmentationMeter`, the one behind ``val_miou``). Never a mask: the images a
drawing shows are read again from the loader's dataset, by index.

Examples:
    >>> interp = interpret(segmenter, val_loader)  # doctest: +SKIP
    >>> interp.worst(2)  # doctest: +SKIP
    [SegmentationSample(index=5, iou=0.12, accuracy=0.61, path='val/images/0105.png'), ...]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..models.model import TransferModel
from ..tasks import IGNORE_INDEX, Task
from ..tasks.metrics import SegmentationMeter, iou_from_confusion, miou_from_confusion
from ..training import Trainer
from ..viz.plots import display_images, draw_segmentation, require_matplotlib, save_figure
from .stream import Reread, check_pair, rerun, sample_paths, stream

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SegmentationInterpretation", "SegmentationSample", "image_scores", "interpret_segmentation"]


@dataclass(frozen=True)
class SegmentationSample:
    """One image as the model segmented it.

    Attributes:
        index: Its position in the loader's order (0-based).
        iou: The mean IoU over the classes present in its true or predicted mask (255 pixels left out).
        accuracy: The share of its labelled pixels predicted right.
        path: Its image file, when the loader reads a dataset with ``samples`` in order; else None.
    """

    index: int
    iou: float
    accuracy: float
    path: str | None = None


def image_scores(predicted: Tensor, masks: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per image, the IoU and the pixel accuracy of predicted class masks against true ones.

    The IoU is the mean over the classes present in the image's true or predicted mask, counting only
    pixels whose truth is not 255 (``IGNORE_INDEX``); an image without a labelled pixel gets NaN for both.

    Args:
        predicted: Predicted classes ``[N, H, W]``.
        masks: True classes ``[N, H, W]`` (255 = ignore).
        num_classes: K.

    Returns:
        ``(iou [N], accuracy [N])``, float64.

    Examples:
        >>> predicted = torch.tensor([[[0, 1], [1, 1]]])  # [1, 2, 2]
        >>> masks = torch.tensor([[[0, 1], [0, 255]]])
        >>> iou, accuracy = image_scores(predicted, masks, num_classes=2)  # class 0: 1/2, class 1: 1/2
        >>> iou.tolist(), [round(a, 4) for a in accuracy.tolist()]
        ([0.5], [0.6667])
    """
    n, k = len(masks), num_classes
    labelled = masks != IGNORE_INDEX
    offsets = (torch.arange(n, device=masks.device) * k).view(n, 1, 1).expand_as(masks)[labelled]
    truth, guess = masks[labelled], predicted[labelled]
    right = truth == guess

    def count(where: Tensor, classes: Tensor) -> Tensor:  # [N, K]: pixels per image and class
        return torch.bincount(where + classes, minlength=n * k).view(n, k).double()

    hits = count(offsets[right], truth[right])
    union = count(offsets, truth) + count(offsets, guess) - hits
    present = union > 0
    iou = torch.where(present, hits / union.clamp(min=1), 0.0).sum(1) / present.sum(1)  # 0 / 0: NaN
    accuracy = hits.sum(1) / labelled.flatten(1).sum(1)
    return iou, accuracy


class SegmentationInterpretation:
    """Per-image IoU and pixel accuracy, and the confusion matrix, of one pass (build it with `interpret`).

    Args:
        classes: Class names by index.
        ious: Per-image IoU ``[N]`` (NaN for an image without labelled pixels).
        accuracies: Per-image pixel accuracy ``[N]``.
        confusion: ``[K, K]`` pixel counts, rows true, columns predicted.
        paths: The image file of each sample, or None when the loader does not say.
        model: The model, to draw samples again (`show_worst`).
        reread: How to read samples again from the loader (`transferkit.interpret.stream.Reread`).
        trainer: The pass's Trainer (its device and precision), for the drawings.

    Examples:
        >>> interp = interpret(segmenter, val_loader)  # doctest: +SKIP
        >>> len(interp), interp.confusion_matrix().shape, round(interp.miou(), 3)  # doctest: +SKIP
        (20, torch.Size([4, 4]), 0.412)
    """

    def __init__(
        self,
        classes: list[str],
        ious: Tensor,
        accuracies: Tensor,
        confusion: Tensor,
        paths: list[str] | None = None,
        *,
        model: TransferModel | None = None,
        reread: Reread | None = None,
        trainer: Trainer | None = None,
    ) -> None:
        self.classes, self.ious, self.accuracies, self.confusion = classes, ious, accuracies, confusion
        self.paths, self.model, self.reread, self.trainer = paths, model, reread, trainer

    def __len__(self) -> int:
        return len(self.ious)

    def sample(self, index: int) -> SegmentationSample:
        """The sample at ``index`` in the loader's order."""
        path = None if self.paths is None else self.paths[index]
        return SegmentationSample(index, float(self.ious[index]), float(self.accuracies[index]), path)

    def worst(self, k: int = 8) -> list[SegmentationSample]:
        """The ``k`` images with the lowest IoU, lowest first (ties: loader order; images without a
        labelled pixel have no IoU and are left out).

        Examples:
            >>> [(s.index, round(s.iou, 2)) for s in interp.worst(2)]  # doctest: +SKIP
            [(5, 0.12), (0, 0.3)]
        """
        if k < 0:
            raise ValueError(f"worst(k={k}): k must be >= 0")
        scored = (~self.ious.isnan()).nonzero().flatten()
        order = scored[torch.sort(self.ious[scored], stable=True).indices][:k]
        return [self.sample(int(i)) for i in order]

    def confusion_matrix(self) -> Tensor:
        """``[K, K]`` pixel counts (int64): row = true class, column = predicted class (255 left out)."""
        return self.confusion.clone()

    def per_class_iou(self) -> list[tuple[str, float]]:
        """``(name, IoU)`` of every class over the whole pass; NaN for a class absent from both the true and
        the predicted masks. Their mean over the present classes is `miou`.

        Examples:
            >>> interp.per_class_iou()[:2]  # doctest: +SKIP
            [('background', 0.91), ('circle', 0.37)]
        """
        return [(name, float(iou)) for name, iou in zip(self.classes, iou_from_confusion(self.confusion))]

    def miou(self) -> float:
        """The mean IoU over the classes present (``val_miou`` of the same model and loader)."""
        return miou_from_confusion(self.confusion)

    def pixel_accuracy(self) -> float:
        """The share of all labelled pixels predicted right (``val_acc`` of a segmentation model)."""
        return float(self.confusion.diagonal().sum() / self.confusion.sum().clamp(min=1))

    def show_worst(
        self, k: int = 8, path: str | os.PathLike[str] | None = None, *, columns: int = 4
    ) -> Figure:
        """The ``k`` worst images (`worst`), each with its true and then its predicted mask overlaid.

        The images are read again from the loader's dataset and the model runs on those alone, so the
        pass kept no mask. Panels are titled with the image's index in the loader and its IoU.

        Args:
            k: How many images.
            path: Where to write the PNG; None only returns the figure.
            columns: Panels per row (two per image).

        Returns:
            The matplotlib ``Figure``.

        Raises:
            ValueError: The loader was not a `DataLoader` in dataset order, or no image has an IoU.
        """
        require_matplotlib()
        worst = self.worst(k)
        if self.model is None or self.reread is None or self.trainer is None:
            raise ValueError("show_worst() draws an interpretation built by interpret(model, loader)")
        inputs, masks = self.reread.batch([s.index for s in worst], "show_worst()")
        outputs = rerun(self.trainer, self.model, inputs)
        images = np.stack(display_images(inputs, self.model))
        fig = draw_segmentation(images, outputs.argmax(1).cpu().numpy(), list(masks), self.classes, columns)
        for i, sample in enumerate(worst):  # two panels per image: the true mask, then the predicted one
            fig.axes[2 * i].set_title(f"#{sample.index} true, IoU {sample.iou:.2f}", fontsize=9)
            fig.axes[2 * i + 1].set_title(f"#{sample.index} predicted ({sample.accuracy:.0%} px)", fontsize=9)
        fig.suptitle(f"the {len(worst)} images with the lowest IoU: true vs predicted masks (overlaid)")
        save_figure(fig, path)
        return fig


def _split_masks(num_classes: int) -> Any:
    """The pass's batch check: ``(images, class index masks)``, as the task checks them."""

    def split(batch: Any, task: Task, where: str) -> tuple[Any, Any]:
        inputs, masks = check_pair(batch, "masks", where)
        task.check_inputs(inputs, where)
        if not isinstance(masks, Tensor) or masks.is_floating_point():
            raise ValueError(
                f"the targets at {where} are not class index masks [N, H, W] (an int tensor); pass those"
            )
        task.check_batch(inputs, masks, num_classes, where)
        return inputs, masks

    return split


def interpret_segmentation(
    model: TransferModel,
    loader: Iterable[Any],
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> SegmentationInterpretation:
    """Run a segmentation ``model`` once over ``loader`` (batches ``(images, masks)``) and keep what
    explains it: per image its IoU and pixel accuracy, and the pixel confusion matrix.

    Args:
        model: A segmentation `TransferModel` (outputs ``[N, K, H, W]`` at the masks' size).
        loader: Batches in a fixed order; masks ``[N, H, W]`` of class indices, 255 = ignore.
        device: As for `transferkit.Trainer`.
        precision: As for `transferkit.Trainer`.
        progress: A bar over the batches where bars render.

    Returns:
        The `SegmentationInterpretation`.

    Raises:
        ValueError: Masks that are not class indices, outputs of another size than the masks, or an
            empty loader.

    Examples:
        >>> interp = interpret_segmentation(segmenter, loaders["val"], device="cpu")  # doctest: +SKIP
        >>> len(interp), len(interp.per_class_iou())  # doctest: +SKIP
        (20, 4)
    """
    k = model.num_classes
    meters: list[SegmentationMeter] = []  # one, on the pass's device once the first batch is there
    kept: list[Tensor] = []  # per batch: [2, n] IoU and pixel accuracy (float64, CPU)

    def update(outputs: Tensor, masks: Tensor) -> None:
        if not meters:
            meters.append(SegmentationMeter(k, ignore_index=IGNORE_INDEX, device=masks.device))
        meters[0].update(outputs, masks)  # checks the outputs' classes and size against the masks
        kept.append(torch.stack(image_scores(outputs.argmax(1), masks, k)).cpu())

    trainer = stream(
        model, loader, update, split=_split_masks(k), device=device, precision=precision, progress=progress
    )
    ious, accuracies = torch.cat(kept, dim=1)
    return SegmentationInterpretation(
        model.classes, ious, accuracies, meters[0].confmat.cpu(), sample_paths(loader, len(ious)),
        model=model, reread=Reread(loader, len(ious)), trainer=trainer,
    )  # fmt: skip
