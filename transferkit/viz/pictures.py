"""What each task draws: its grid of predictions (`show_predictions`), a batch as the model sees it
(`show_batch`), the per-class pictures of a run folder (a confusion matrix, per-class IoU), and the boxes
``transferkit predict --draw`` writes.

Each task's pictures are a `TaskPictures` found by the task's name in `PICTURES`, as the tasks themselves
are in `transferkit.tasks.TASKS`; a task without its own draws no run-folder pictures and refuses the
others with a message. The tasks know nothing of drawing, so they sit below this package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..models.classes import dataset_classes
from ..registry import Registry
from ..tasks import get_task
from .batch import draw_box_batch, draw_class_batch, draw_mask_batch
from .detection_plots import draw_detection
from .metric_plots import plot_class_iou, plot_confusion_matrix
from .plots import (
    _class_names,
    _logits,
    _take,
    display_images,
    draw_classification,
    draw_segmentation,
    require_matplotlib,
    save_figure,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PICTURES", "TaskPictures", "pictures", "show_batch", "show_predictions"]

PICTURES = Registry("task pictures")


class TaskPictures:
    """The pictures of a task without drawings of its own: none for a run folder, and errors for the rest.

    Args:
        task: The task's name, for messages.
    """

    def __init__(self, task: str) -> None:
        self.task = task

    def predictions(
        self, images: np.ndarray, outputs: Any, targets: Any, names: list[str], columns: int
    ) -> Figure:
        """The figure `show_predictions` draws: images ``[N, H, W, 3]`` (floats in [0, 1]) with outputs."""
        raise ValueError(
            f"show_predictions draws classification, segmentation and detection models, not {self.task}"
        )

    def metrics(self, model: nn.Module, loader: Any, folder: Path) -> list[Path]:
        """Per-class pictures for a run folder, written next to the curves; the files written."""
        return []

    def batch(self, images: list[np.ndarray], targets: Any, names: list[str], columns: int) -> Figure:
        """The figure `show_batch` draws: images ``[H, W, 3]`` (floats in [0, 1]) with their targets."""
        raise ValueError(
            f"show_batch draws classification, segmentation and detection batches, not {self.task}"
        )

    def answers(self, images: list[Image.Image], answers: list[Any], classes: list[str], path: Path) -> None:
        """A picture of ``model.predict`` answers over their images (``transferkit predict --draw``)."""
        raise ValueError(
            f"--draw pictures are drawn for detection models; for a {self.task} model see the run "
            "folder's predictions.png (transferkit.viz.show_predictions)"
        )


@PICTURES.register("classification")
class ClassificationPictures(TaskPictures):
    """Images titled with the predicted and the true class; a confusion matrix for the run folder."""

    def predictions(
        self, images: np.ndarray, outputs: Tensor, targets: Any, names: list[str], columns: int
    ) -> Figure:
        return draw_classification(images, outputs.softmax(1), targets, names, columns)

    def batch(self, images: list[np.ndarray], targets: Any, names: list[str], columns: int) -> Figure:
        return draw_class_batch(images, targets, names, columns)

    def metrics(self, model: nn.Module, loader: Any, folder: Path) -> list[Path]:
        plot_confusion_matrix(model, loader, folder / "confusion.png")
        return [folder / "confusion.png"]


@PICTURES.register("segmentation")
class SegmentationPictures(TaskPictures):
    """True and predicted masks over each image; the IoU of each class for the run folder."""

    def predictions(
        self, images: np.ndarray, outputs: Tensor, targets: Any, names: list[str], columns: int
    ) -> Figure:
        return draw_segmentation(images, outputs.argmax(1).numpy(), targets, names, columns)

    def batch(self, images: list[np.ndarray], targets: Any, names: list[str], columns: int) -> Figure:
        return draw_mask_batch(images, targets, names, columns)

    def metrics(self, model: nn.Module, loader: Any, folder: Path) -> list[Path]:
        plot_class_iou(model, loader, folder / "class_iou.png")
        return [folder / "class_iou.png"]


@PICTURES.register("detection")
class DetectionPictures(TaskPictures):
    """Predicted boxes (solid) over the true ones (dashed); the same boxes over ``predict``'s images."""

    def predictions(
        self, images: np.ndarray, outputs: Any, targets: Any, names: list[str], columns: int
    ) -> Figure:
        return draw_detection(list(images), outputs, targets, names, columns)

    def batch(self, images: list[np.ndarray], targets: Any, names: list[str], columns: int) -> Figure:
        return draw_box_batch(images, targets, names, columns)

    def answers(self, images: list[Image.Image], answers: list[Any], classes: list[str], path: Path) -> None:
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255 for image in images]
        draw_detection(arrays, answers, None, classes, columns=min(4, len(arrays)), path=path)


def pictures(task: str) -> TaskPictures:
    """The pictures of the task named ``task`` (a plain `TaskPictures` for a task without its own).

    Examples:
        >>> type(pictures("segmentation")).__name__, pictures("my_task").metrics(None, None, Path("."))
        ('SegmentationPictures', [])
    """
    return PICTURES.get(task)(task) if task in PICTURES else TaskPictures(task)


def show_predictions(
    model: nn.Module,
    loader: Iterable[Any],
    path: str | os.PathLike[str] | None = None,
    *,
    max_images: int = 16,
    classes: Sequence[str] | None = None,
    columns: int = 4,
) -> Figure:
    """A grid of images from ``loader`` titled with the model's prediction and the true class.

    Classification: each image is titled ``pred: <class> <probability>`` and ``true: <class>``, green when
    right and red when wrong; the figure title counts the right ones. Segmentation (``model.task``): each
    image appears twice, the true mask overlaid and then the predicted one (a class named ``background``
    stays clear, 255 = ignore is never tinted), titled with the pixel accuracy; a legend names the colours.
    Detection: predicted boxes (solid, with class and score) over true ones (dashed), see `detection_plots`.
    Images are shown as the model saw them (after the loader's transforms), with the normalisation of
    ``model.data_config`` undone. The model runs in eval mode without gradients on its own device; its
    train/eval mode is restored afterwards.

    Args:
        model: A classification (logits ``[N, K]``), segmentation (``[N, K, H, W]``) or detection model.
        loader: Yields ``(images [B, 3, H, W], targets)`` (or images alone: titles then show predictions
            only); the first ``max_images`` images are drawn.
        path: Where to write the PNG (parent folders are created); None only returns the figure.
        max_images: How many images to draw.
        classes: Class names by index; default ``model.classes`` when it has names, else
            ``loader.dataset.classes``, else the indices.
        columns: Panels per row.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ValueError: ``max_images`` or ``columns`` < 1, or an empty loader.
        ImportError: matplotlib is not installed (the message gives the install command).

    Examples:
        >>> model = build_model("resnet18", num_classes=3, pretrained=False)  # doctest: +SKIP
        >>> fig = show_predictions(model, loaders["val"], "predictions.png", max_images=8)  # doctest: +SKIP
        >>> len(fig.axes)  # 8 images in rows of 4  # doctest: +SKIP
        8
    """
    if max_images < 1 or columns < 1:
        raise ValueError(f"max_images and columns must be >= 1, got {max_images} and {columns}")
    require_matplotlib()
    inputs, targets = _take(loader, max_images)
    raw = _logits(model, inputs)
    name = getattr(model, "task", None) or ("segmentation" if raw.ndim == 4 else "classification")
    outputs = get_task(name).float_outputs(raw, torch.device("cpu"))
    names = _class_names(classes, model, loader, getattr(model, "num_classes", None) or outputs.shape[1])
    images = np.stack(display_images(inputs, model))
    fig = pictures(name).predictions(images, outputs, targets, names, columns)
    save_figure(fig, path)
    return fig


def show_batch(
    loader: Iterable[Any],
    model: nn.Module | None = None,
    *,
    n: int = 16,
    columns: int = 4,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """The first ``n`` samples of one batch of ``loader``, as the model sees them: after augmentation.

    Check augmentation, masks and boxes here before training. Images are un-normalised with the mean and
    std the loader's dataset declares (the loaders of `transferkit.data` do), else ``model.data_config``,
    else ImageNet's. Classification: each image titled with its class name. Segmentation: its mask
    overlaid (a class named ``background`` and 255 = ignore stay uncoloured), a legend names the colours.
    Detection: its true boxes, labelled with their class names. Class names come from
    ``loader.dataset.classes``, else ``model.classes``, else the indices.

    Args:
        loader: Yields ``(images [B, C, H, W], targets)``: class indices ``[B]``, masks ``[B, H, W]`` or one
            ``{"boxes", "labels"}`` dict per image.
        model: Gives the task (``model.task``), its preprocessing and class names; without it the task is
            read from the targets' form.
        n: At most this many images (a shorter first batch draws fewer).
        columns: Panels per row.
        path: Where to write the PNG (parent folders are created); None only returns the figure.

    Returns:
        The matplotlib ``Figure``, one panel per image.

    Raises:
        ValueError: ``n`` or ``columns`` < 1, an empty loader, or batches that are not ``(images, targets)``.
        ImportError: matplotlib is not installed (the message gives the install command).

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(SyntheticShapes(8, image_size=32), batch_size=8)
        >>> fig = show_batch(loader, n=4)  # path="batch.png" writes it
        >>> [ax.get_title() for ax in fig.axes if ax.images]
        ['circle', 'square', 'triangle', 'circle']
    """
    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be >= 1, got {n} and {columns}")
    require_matplotlib()
    batch = next(iter(loader), None)
    if batch is None:
        raise ValueError("the loader yielded no batches; pass a loader with at least one image")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("show_batch needs batches of (images, targets); this loader yields something else")
    inputs, targets = batch[0][:n], list(batch[1][:n])
    task = getattr(model, "task", None) or _task_of(targets)
    own = getattr(model, "classes", None)
    names = dataset_classes(loader) or (list(own) if isinstance(own, list) else None)
    names = names or [str(k) for k in range(_label_count(targets))]
    fig = pictures(task).batch(display_images(inputs, model, loader), targets, names, columns)
    save_figure(fig, path)
    return fig


def _task_of(targets: list[Any]) -> str:
    """The task whose targets look like these: dicts of boxes, ``[H, W]`` masks, or class indices."""
    first = targets[0] if targets else None
    if isinstance(first, dict):
        return "detection"
    if isinstance(first, Tensor) and first.ndim == 2:
        return "segmentation"
    if isinstance(first, Tensor) and first.ndim == 0 and not first.is_floating_point():
        return "classification"
    raise ValueError("cannot tell the task from these targets; pass the model (show_batch(loader, model))")


def _label_count(targets: list[Any]) -> int:
    """One more than the largest label among the targets (255 = ignore left out)."""
    values = [torch.as_tensor(t["labels"] if isinstance(t, dict) else t).flatten() for t in targets]
    labels = torch.cat(values) if values else torch.zeros(0, dtype=torch.long)
    labels = labels[labels != 255]
    return int(labels.max()) + 1 if labels.numel() else 1
