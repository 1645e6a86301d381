"""Classification: one class per image, targets ``[N]`` class indices, outputs logits ``[N, K]``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .base import TASKS, Meter, Task, _require_indices
from .metrics import ClassificationMeter

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["ClassificationTask"]


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
    default_recipe = True  # measured with real weights: benchmarks/bench_recipes.py

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        _require_indices(targets, 1, "class indices [N]", "targets")
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        return ClassificationMeter(num_classes, device=device)

    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        from ..data import image_folder_loaders

        return image_folder_loaders(root, model, **kwargs)

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        from ..data import ClassFolder

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
        from ..data import build_transforms

        return build_transforms(model.data_config, False, image_size)

    def class_scores(self, outputs: Tensor) -> tuple[Tensor, str]:
        return outputs.softmax(1), ""

    def prediction(
        self,
        output: Tensor,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``top_k`` ``(class name, probability)`` pairs, most likely first."""
        values, indices = output.float().softmax(0).topk(min(top_k, len(classes)))
        return [(classes[i], v) for v, i in zip(values.tolist(), indices.tolist())]

    def errors(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """1 for a wrong class, 0 for a right one (probability targets: their largest class counts)."""
        truth = targets.argmax(1) if targets.ndim == 2 else targets
        return (outputs.argmax(1) != truth).float()
