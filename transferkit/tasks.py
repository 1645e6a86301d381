"""Tasks: everything that differs between classification and segmentation, in one object each.

The Trainer, the CLI and the plots never ask which task a model has; they call its `Task`: it checks
targets, moves them to the device, computes the default loss, builds the epoch metric, names the default
monitor, assembles what ``predict`` returns, and knows how to read a dataset folder for that task.
``model.task`` (from the head's ``task`` attribute) is the name; `get_task` gives the object.

Adding a task (detection is next) means one more `Task` subclass registered here and heads that declare
its name: no branch elsewhere changes.

Examples:
    >>> task = get_task("segmentation")
    >>> task.loss(torch.randn(2, 3, 8, 8), torch.full((2, 8, 8), 255)).item()  # every pixel ignored
    0.0
    >>> task.default_monitor(has_val=True), get_task("classification").default_monitor(has_val=False)
    ('val_loss', 'train_loss')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .metrics import ClassificationMeter, SegmentationMeter
from .registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from .model import TransferModel

__all__ = ["IGNORE_INDEX", "TASKS", "ClassificationTask", "Meter", "SegmentationTask", "Task", "get_task"]

IGNORE_INDEX = 255  # mask value of unlabelled pixels
TASKS = Registry("task")


class Meter(Protocol):
    """An epoch metric: ``update`` per batch, ``compute`` at the end; ``state`` tensors sum across ranks."""

    state: tuple[Tensor, ...]

    def update(self, outputs: Tensor, targets: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task:
    """What one task needs from the training loop, the metrics, the CLI and the plots.

    Subclasses set ``name`` (the ``task`` their heads declare) and override what differs.
    """

    name: str = ""
    collate_fn: Callable[[list[Any]], Any] | None = None  # None: the DataLoader's default collate

    def check_targets(self, targets: Tensor, num_classes: int, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` when a target lies outside the classes."""
        if targets.is_floating_point():
            return  # soft targets for a custom loss
        bad = (targets < 0) | (targets >= num_classes)
        if bad.any():
            raise ValueError(
                f"target value {int(targets[bad][0])} at {where} is outside [0, {num_classes}) for "
                f"num_classes={num_classes}; fix the labels or build the model with the right num_classes."
            )

    def to_device(self, targets: Tensor, device: torch.device) -> Tensor:
        """Targets on ``device``; integer labels as int64, as the losses want them."""
        targets = targets.to(device, non_blocking=True)
        return targets if targets.is_floating_point() else targets.long()

    def num_samples(self, targets: Tensor) -> int:
        """Samples in a batch (weights the batch's loss in the epoch mean)."""
        return len(targets)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The default training loss."""
        raise NotImplementedError

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        """A fresh epoch metric."""
        raise NotImplementedError

    def default_monitor(self, has_val: bool) -> str:
        """The history key that picks the best epoch when the Trainer is given none."""
        return "val_loss" if has_val else "train_loss"

    def collect(self, outputs: Sequence[Tensor]) -> Tensor:
        """What ``Trainer.predict`` returns from the per-batch outputs (on the CPU, in loader order)."""
        return torch.cat(list(outputs))

    # --------------------------------------------------------------------------------- data folders
    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        """``{"train": ..., "val": ...}`` for a dataset folder of this task (see `transferkit.data`)."""
        raise NotImplementedError

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        """One split folder with the model's evaluation transforms and fixed class indices."""
        raise NotImplementedError

    def image_transform(
        self, model: TransferModel, image_size: int | None
    ) -> Callable[[Image.Image], Tensor]:
        """The evaluation transform of a single image, as ``predict`` sees it."""
        raise NotImplementedError

    def class_scores(self, outputs: Tensor) -> tuple[Tensor, str]:
        """Per-image class scores ``[N, K]`` for a ranked listing, and the unit they are in."""
        raise NotImplementedError

    def draw_predictions(
        self, images: np.ndarray, outputs: Tensor, targets: Tensor | None, names: list[str], columns: int
    ) -> Figure:
        """The figure `transferkit.plots.show_predictions` draws: images ``[N, H, W, 3]`` with outputs."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@TASKS.register("classification")
class ClassificationTask(Task):
    """Images to one class each: targets ``[N]`` class indices, outputs logits ``[N, K]``.

    Examples:
        >>> task = ClassificationTask()
        >>> meter = task.meter(num_classes=2, device=torch.device("cpu"))
        >>> meter.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))  # [2, 2], [2]
        >>> meter.compute()
        {'acc': 0.5}
    """

    name = "classification"

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        return ClassificationMeter(num_classes, device=device)

    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        from .data import image_folder_loaders

        return image_folder_loaders(root, model, **kwargs)

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        from .data import ClassFolder

        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(
                f"{split_dir} has class folders {unknown} that the model does not know (its classes: "
                f"{classes}); evaluate on folders named after the model's classes"
            )
        return ClassFolder(split_dir, self.image_transform(model, image_size), classes=classes)

    def image_transform(
        self, model: TransferModel, image_size: int | None
    ) -> Callable[[Image.Image], Tensor]:
        from .data import build_transforms

        return build_transforms(model.data_config, False, image_size)

    def class_scores(self, outputs: Tensor) -> tuple[Tensor, str]:
        return outputs.softmax(1), ""

    def draw_predictions(
        self, images: np.ndarray, outputs: Tensor, targets: Tensor | None, names: list[str], columns: int
    ) -> Figure:
        from .plots import draw_classification

        return draw_classification(images, outputs.softmax(1), targets, names, columns)


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """A class per pixel: targets masks ``[N, H, W]`` (``255`` = ignore), outputs ``[N, K, H, W]``.

    The loss is cross-entropy averaged over the labelled pixels of the batch, 0 (not NaN) when none is.
    """

    name = "segmentation"

    def check_targets(self, targets: Tensor, num_classes: int, where: str) -> None:
        if targets.is_floating_point():
            return
        bad = ((targets < 0) | (targets >= num_classes)) & (targets != IGNORE_INDEX)
        if bad.any():
            raise ValueError(
                f"target value {int(targets[bad][0])} at {where} is outside [0, {num_classes}) or 255 "
                f"(ignore) for num_classes={num_classes}; fix the masks or build the model with the right "
                "num_classes."
            )

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        total = F.cross_entropy(outputs, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        return SegmentationMeter(num_classes, ignore_index=IGNORE_INDEX, device=device)

    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        from .data import segmentation_folder_loaders

        return segmentation_folder_loaders(root, model, **kwargs)

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        from .data import SegmentationFolder, build_segmentation_transforms

        transform = build_segmentation_transforms(model.data_config, False, image_size)
        return SegmentationFolder(split_dir, transform, classes=classes)

    def image_transform(
        self, model: TransferModel, image_size: int | None
    ) -> Callable[[Image.Image], Tensor]:
        from .data import build_segmentation_transforms

        pair = build_segmentation_transforms(model.data_config, False, image_size)
        return lambda image: pair(image, Image.new("L", image.size))[0]  # the blank mask only fills the pair

    def class_scores(self, outputs: Tensor) -> tuple[Tensor, str]:
        k = outputs.shape[1]
        counts = torch.stack([torch.bincount(p.flatten(), minlength=k) for p in outputs.argmax(1)])
        return counts.float() / counts.sum(1, keepdim=True), " of pixels"

    def draw_predictions(
        self, images: np.ndarray, outputs: Tensor, targets: Tensor | None, names: list[str], columns: int
    ) -> Figure:
        from .plots import draw_segmentation

        return draw_segmentation(images, outputs.argmax(1).numpy(), targets, names, columns)


def get_task(name: str) -> Task:
    """The `Task` object for a task name (``model.task``).

    Raises:
        ValueError: An unknown name; the message names the known tasks and the closest match.

    Examples:
        >>> get_task("classification")
        ClassificationTask()
    """
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; the known tasks are {TASKS.names()}. A head declares its task with a "
            "'task' attribute; register a new one with transferkit.tasks.TASKS.register(name)."
        )
    return TASKS.get(name)()
