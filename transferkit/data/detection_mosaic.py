"""Mosaic: four training images tiled into one around a random centre, boxes with them (YOLOv4).

The folder dataset draws the other three images and the centre under the sample's seed
(`transferkit.data.DetectionFolder`'s ``mosaic``, `transferkit.data.detection_folder_loaders`'s
``mosaic=p``), so an epoch repeats exactly in new worker processes and a resumed run sees the mosaics the
uninterrupted one saw. Boxes cut at a tile's edge follow the rule of
`transferkit.data.detection_augment.visible_boxes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .detection_augment import MIN_VISIBLE, Target, check_min_visible, check_mosaic, visible_boxes

__all__ = ["DetectionMosaic"]

Sample = tuple[Any, Mapping[str, Any]]  # (PIL image or uint8 tensor [3, H, W], {"boxes", "labels"})


class DetectionMosaic:
    """Four training images tiled into one around a random centre, boxes with them (YOLOv4's mosaic).

    The centre is drawn in the middle half of each side; the four lines through it cut the canvas into
    quadrants. Each image is resized as the evaluation resize would (stretched to the canvas), scaled
    down just enough to cover its quadrant, and placed with its corner at the centre; what reaches past
    the quadrant is cut off. Boxes are resized and shifted with their image and follow the rule of
    `visible_boxes` at the quadrant's edges. The training transforms then run on the mosaic as on any
    image. Every draw is from torch's generator, which `transferkit.data.sample_randomness` seeds per
    sample, so an epoch repeats exactly in new worker processes.

    Args:
        size: ``(height, width)`` of the mosaic, the model's input size.
        p: Probability that a sample is a mosaic, from 0 to 1.
        min_visible: Fraction of a box's area that must stay in its quadrant for it to be kept.
        interpolation: Resampling of the images.

    Raises:
        ValueError: ``p`` or ``min_visible`` not in ``[0, 1]``, or a ``size`` side under 2 pixels.

    Examples:
        >>> mosaic = DetectionMosaic((32, 32), p=1.0)
        >>> sample = (Image.new("RGB", (40, 40)), {"boxes": [[0, 0, 40, 40]], "labels": [2]})
        >>> image, target = mosaic([sample] * 4)
        >>> image.size, target["boxes"].shape, target["labels"].tolist()  # one box per quadrant
        ((32, 32), torch.Size([4, 4]), [2, 2, 2, 2])
        >>> len(mosaic.pick(0, num_samples=10))  # the sample itself and three others
        4
    """

    def __init__(
        self,
        size: tuple[int, int],
        p: float = 1.0,
        *,
        min_visible: float = MIN_VISIBLE,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    ) -> None:
        height, width = (int(side) for side in size)
        if height < 2 or width < 2:
            raise ValueError(f"a mosaic's size is (height, width) of 2 pixels or more, got {size!r}")
        self.size, self.p = (height, width), check_mosaic(p)
        self.min_visible, self.interpolation = check_min_visible(min_visible), interpolation

    def pick(self, index: int, num_samples: int) -> list[int]:
        """The samples to show for ``index``: itself alone (with probability ``1 - p``), or itself and
        three other random samples of ``0..num_samples-1`` (repeated only when there are fewer), to tile."""
        if float(torch.rand(())) >= self.p:
            return [index]
        if num_samples < 4:
            return [index, *torch.randint(num_samples, (3,)).tolist()]
        shown = [index]
        while len(shown) < 4:
            other = int(torch.randint(num_samples, ()))
            if other not in shown:
                shown.append(other)
        return shown

    def __call__(self, samples: Sequence[Sample]) -> tuple[Image.Image, Target]:
        """Tiles four ``(RGB image, {"boxes", "labels"})`` samples into ``(PIL image, target)``.

        Raises:
            ValueError: Not four samples.
        """
        if len(samples) != 4:
            raise ValueError(f"a mosaic tiles 4 samples, got {len(samples)}; DetectionMosaic.pick draws them")
        height, width = self.size
        cx = int(torch.randint(width // 4, width - width // 4 + 1, ()))
        cy = int(torch.randint(height // 4, height - height // 4 + 1, ()))
        canvas = torch.zeros(3, height, width, dtype=torch.uint8)
        quadrants = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
        boxes, labels = [], []
        for (image, target), quadrant in zip(samples, quadrants, strict=True):
            tile_boxes, keep = self._paste(canvas, image, target["boxes"], quadrant)
            boxes.append(tile_boxes)
            labels.append(torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)[keep])
        return TF.to_pil_image(canvas), {"boxes": torch.cat(boxes), "labels": torch.cat(labels)}

    def _paste(
        self, canvas: Tensor, image: Any, boxes: Any, quadrant: tuple[int, int, int, int]
    ) -> tuple[Tensor, Tensor]:
        """Draws ``image`` into ``quadrant`` of ``canvas``; returns its boxes there and which were kept."""
        x0, y0, x1, y1 = quadrant
        pixels = TF.to_image(image)
        on_image = tv_tensors.BoundingBoxes(
            torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=tuple(pixels.shape[-2:]),
            clamping_mode=None,
        )
        if x1 == x0 or y1 == y0:  # the centre on the canvas' edge leaves this quadrant empty
            return torch.zeros(0, 4), torch.zeros(len(on_image), dtype=torch.bool)
        height, width = self.size
        scale = max((y1 - y0) / height, (x1 - x0) / width)  # covers the quadrant, cut on one side
        size = [math.ceil(scale * height), math.ceil(scale * width)]
        pixels = TF.resize(pixels, size, interpolation=self.interpolation, antialias=True)
        resized = TF.resize(on_image, size).as_subclass(Tensor)
        # the corner at the centre stays: top quadrants keep the tile's bottom, left ones its right
        top, left = (size[0] - (y1 - y0) if y0 == 0 else 0), (size[1] - (x1 - x0) if x0 == 0 else 0)
        canvas[:, y0:y1, x0:x1] = pixels[:3, top : top + y1 - y0, left : left + x1 - x0]
        kept, keep = visible_boxes(
            resized - torch.tensor([left, top] * 2), (y1 - y0, x1 - x0), self.min_visible
        )
        return kept + torch.tensor([x0, y0] * 2, dtype=kept.dtype), keep

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, p={self.p}, min_visible={self.min_visible})"
