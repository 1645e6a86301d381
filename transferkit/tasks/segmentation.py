"""Segmentation: a class per pixel, targets masks ``[N, H, W]`` (255 = ignore), outputs ``[N, K, H, W]``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .base import IGNORE_INDEX, TASKS, Meter, Task, _require_indices
from .metrics import SegmentationMeter

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["SegmentationTask"]


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """A class per pixel: targets masks ``[N, H, W]`` (``255`` = ignore), outputs ``[N, K, H, W]``.

    The loss is cross-entropy averaged over the labelled pixels of the batch, 0 (not NaN) when none is.
    """

    name = "segmentation"
    eval_center_crop = False  # the whole image is resized: every pixel is scored

    def check_targets(self, targets: Tensor, num_classes: int, where: str) -> None:
        if targets.is_floating_point():
            return  # soft targets for a custom loss; the default loss refuses them (`_require_indices`)
        if targets.ndim != 3 and not _one_channel(targets):
            raise ValueError(
                f"the masks at {where} have shape {list(targets.shape)}; segmentation takes class index "
                "masks [N, H, W] (or [N, 1, H, W]); colour masks must be mapped to class indices first"
            )
        bad = ((targets < 0) | (targets >= num_classes)) & (targets != IGNORE_INDEX)
        if bad.any():
            raise ValueError(
                f"target value {int(targets[bad][0])} at {where} is outside [0, {num_classes}) or 255 "
                f"(ignore) for num_classes={num_classes}; fix the masks or build the model with the right "
                "num_classes."
            )

    def to_device(self, targets: Tensor, device: torch.device) -> Tensor:
        """Masks on ``device`` as int64 ``[N, H, W]``; integer ``[N, 1, H, W]`` masks are squeezed."""
        return super().to_device(targets.squeeze(1) if _one_channel(targets) else targets, device)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        _require_indices(targets, 3, "class index masks [N, H, W] (255 = ignore)", "masks")
        total = F.cross_entropy(
            outputs, targets, ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing
        )
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        return SegmentationMeter(num_classes, ignore_index=IGNORE_INDEX, device=device)

    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        from ..data import segmentation_folder_loaders

        return segmentation_folder_loaders(root, model, **kwargs)

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        from ..data import SegmentationFolder, build_segmentation_transforms

        transform = build_segmentation_transforms(model.data_config, False, image_size)
        return SegmentationFolder(split_dir, transform, classes=classes)

    def image_transform(
        self, model: TransferModel, image_size: int | None
    ) -> Callable[[Image.Image], Tensor]:
        from ..data import build_segmentation_transforms

        pair = build_segmentation_transforms(model.data_config, False, image_size)
        return lambda image: pair(image, Image.new("L", image.size))[0]  # the blank mask only fills the pair

    def prediction(
        self,
        output: Tensor,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> Tensor:
        """The predicted mask ``[H, W]`` (class indices) at the image's own size."""
        if tuple(output.shape[-2:]) != tuple(size):
            output = F.interpolate(output[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        return output.argmax(0)

    csv_columns = ("pixel_share",)
    score_unit = " of pixels"
    writes_masks = True

    def rows(
        self,
        output: Tensor,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int],
        **options: Any,
    ) -> list[tuple[Any, ...]]:
        """The ``top_k`` classes by their share of the pixels of `prediction`'s mask (the image's size)."""
        mask = self.prediction(output, classes, top_k, size, input_size)
        shares = torch.bincount(mask.flatten(), minlength=len(classes)).double() / mask.numel()
        values, indices = shares.topk(min(top_k, len(classes)))
        return [(classes[i], v) for v, i in zip(values.tolist(), indices.tolist())]

    def class_scores(self, outputs: Tensor) -> tuple[Tensor, str]:
        k = outputs.shape[1]
        counts = torch.stack([torch.bincount(p.flatten(), minlength=k) for p in outputs.argmax(1)])
        return counts.float() / counts.sum(1, keepdim=True), " of pixels"

    def errors(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The fraction of each image's labelled pixels (not ``255``) whose class is wrong."""
        labelled = targets != IGNORE_INDEX
        wrong = (outputs.argmax(1) != targets) & labelled
        return wrong.flatten(1).sum(1) / labelled.flatten(1).sum(1).clamp(min=1)


def _one_channel(targets: Tensor) -> bool:
    """Integer masks ``[N, 1, H, W]``: unambiguous, the channel goes."""
    return targets.ndim == 4 and targets.shape[1] == 1 and not targets.is_floating_point()
