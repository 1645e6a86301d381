"""Box-aware transforms for detection: flips, scale jitter, random crops and mosaic, with exact boxes.

Every geometric step is one of torchvision's transforms v2 (or its ``resize`` kernel), which moves and
scales the boxes exactly as it moves and scales the pixels. The boxes travel unclipped
(``clamping_mode=None``) until the crop is done, so that what a crop cut away is known; then one rule
decides which boxes stay (`visible_boxes`):

- a box is **kept** when at least ``min_visible`` of its area (default `MIN_VISIBLE`, a quarter) is still
  in view, and is **clipped** to what is in view;
- otherwise it is **dropped**, with its label: a sliver of an object labelled as the whole would teach
  the detector to fire on fragments. Boxes under a pixel wide or high are dropped too
  (``SanitizeBoundingBoxes``).

For comparison, torchvision's ``RandomIoUCrop`` keeps a box whose centre is in the crop: at least half
of a box cut on one side, at least a quarter of one cut at a corner.

Training (`build_detection_transforms` with ``train=True``): a horizontal flip, then the image resized to
the input size times a random factor from ``scale_range`` (default `SCALE_RANGE`), then a random crop of
the input size (padded with the mean colour where the image is smaller), the rule above, and a light
colour jitter. Evaluation: the fixed resize only, nothing random.

`transferkit.data.detection_mosaic.DetectionMosaic` tiles four training images into one, with the same
rule at the tiles' edges.

Examples:
    >>> import torch
    >>> boxes, keep = visible_boxes(torch.tensor([[-6.0, 0, 2, 4], [-2, 0, 6, 4]]), (8, 8), 0.5)
    >>> boxes.tolist(), keep.tolist()  # a quarter in view: dropped; three quarters: clipped
    ([[0.0, 0.0, 6.0, 4.0]], [False, True])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from .augment import check_flip, check_range
from .transforms import _resolve_preprocess, _tensor_steps

__all__ = [
    "MIN_VISIBLE",
    "SCALE_RANGE",
    "build_detection_transforms",
    "check_min_visible",
    "check_mosaic",
    "check_scale_range",
    "visible_boxes",
]

Target = dict[str, Tensor]
DetectionTransform = Callable[[Any, Mapping[str, Any]], tuple[Tensor, Target]]

# About the spread of multi-scale detection training (Detectron2's 640-800 px shorter side), even in
# log-scale, so objects keep the size they have at evaluation on average.
SCALE_RANGE = (0.8, 1.25)
MIN_VISIBLE = 0.25  # the fraction of a box's area that must stay in view for the box to be kept
_MAX_SCALE = 4.0  # beyond, one image would take more than 16 times the input's pixels


# ------------------------------------------------------------------------------------------- checks
def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_scale_range(scale_range: Any) -> tuple[float, float]:
    """``scale_range`` as a ``(min, max)`` pair of floats with ``0 < min <= max <= 4``.

    Raises:
        ValueError: Not a pair of finite numbers in that range, or ``min > max``.

    Examples:
        >>> check_scale_range((0.5, 2))
        (0.5, 2.0)
    """
    usage = (
        "scale_range is (min, max), factors of the input size with 0 < min <= max <= 4, e.g. (0.8, 1.25); "
        "(1, 1) turns scale jitter and cropping off"
    )
    return check_range(scale_range, _MAX_SCALE, usage)


def _check_fraction(name: str, value: Any, what: str) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} is {what}, a number from 0 to 1; got {value!r}")
    return float(value)


def check_min_visible(min_visible: Any) -> float:
    """``min_visible`` as a float in ``[0, 1]``: the fraction of a box's area that must stay in view.

    Raises:
        ValueError: Not a number from 0 to 1.
    """
    return _check_fraction("min_visible", min_visible, "the fraction of a box's area that must stay in view")


def check_mosaic(mosaic: Any) -> float:
    """``mosaic`` as a float in ``[0, 1]``: the probability that a training sample is a mosaic.

    Raises:
        ValueError: Not a number from 0 to 1 (``True`` too: say ``1.0``).
    """
    return _check_fraction("mosaic", mosaic, "the probability that a training sample is a mosaic (0: off)")


# ---------------------------------------------------------------------------------------- the rule
def visible_boxes(boxes: Tensor, canvas_size: Sequence[int], min_visible: float) -> tuple[Tensor, Tensor]:
    """The boxes that stay in view of a canvas, clipped to it, and which of the boxes they are.

    A box stays when some of it is in view and at least ``min_visible`` of its area is.

    Args:
        boxes: ``[M, 4]`` xyxy pixels, possibly reaching outside the canvas.
        canvas_size: ``(height, width)`` of the image.
        min_visible: Fraction of a box's area, from 0 to 1.

    Returns:
        ``(kept boxes [K, 4] clipped to the canvas, keep [M] bool)``; index the labels with ``keep``.

    Examples:
        >>> kept, keep = visible_boxes(torch.tensor([[10.0, 2, 20, 6], [30, 0, 40, 4]]), (8, 16), 0.25)
        >>> kept.tolist(), keep.tolist()  # 60 % in view: clipped; none in view: dropped
        ([[10.0, 2.0, 16.0, 6.0]], [True, False])
    """
    height, width = int(canvas_size[0]), int(canvas_size[1])
    x1, y1, x2, y2 = boxes.unbind(-1)
    clipped = torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], -1
    )
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    seen = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    keep = (seen > 0) & (seen >= min_visible * area)
    return clipped[keep], keep


# ----------------------------------------------------------------------------------- pipeline steps
class _ZoomResize(v2.Transform):
    """Resizes to ``size`` times a random factor of ``scale_range``, boxes with it (one resampling).

    torchvision's ``ScaleJitter`` keeps the input's aspect ratio; this stretches to the input size as the
    evaluation resize does, so objects keep their evaluation shape. Only the factor is drawn here; the
    resizing is torchvision's box-aware kernel.
    """

    def __init__(
        self, size: tuple[int, int], scale_range: tuple[float, float], interpolation: InterpolationMode
    ) -> None:
        super().__init__()
        self.size, self.scale_range, self.interpolation = size, scale_range, interpolation

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.scale_range
        scale = low + float(torch.rand(())) * (high - low)
        return {"size": [max(1, round(side * scale)) for side in self.size]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size, interpolation = params["size"], self.interpolation
        return self._call_kernel(TF.resize, inpt, size=size, interpolation=interpolation, antialias=True)


class _DropHiddenBoxes(v2.Transform):
    """Applies `visible_boxes` to ``(image, {"boxes", "labels"})``: labels follow their boxes."""

    def __init__(self, min_visible: float) -> None:
        super().__init__()
        self.min_visible = min_visible

    def forward(self, *inputs: Any) -> Any:
        image, target = inputs if len(inputs) > 1 else inputs[0]
        boxes = target["boxes"]
        kept, keep = visible_boxes(boxes.as_subclass(Tensor), boxes.canvas_size, self.min_visible)
        return image, {**target, "boxes": tv_tensors.wrap(kept, like=boxes), "labels": target["labels"][keep]}


class _BoxTransform:
    """A v2 pipeline over ``(image, {"boxes": BoundingBoxes, "labels"})``, returning plain tensors."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, image: Any, target: Mapping[str, Any]) -> tuple[Tensor, Target]:
        pixels = TF.to_image(image)
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=tuple(pixels.shape[-2:]),
            clamping_mode=None,  # unclipped until the crop is done: the rule needs each box's whole area
        )
        labels = torch.as_tensor(target["labels"], dtype=torch.int64)
        pixels, out = self.transform(pixels, {"boxes": boxes, "labels": labels})
        return pixels, {"boxes": out["boxes"].float(), "labels": out["labels"].long()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def build_detection_transforms(
    data_config: Mapping[str, Any],
    train: bool,
    image_size: int | None = None,
    *,
    flip: bool = True,
    scale_range: tuple[float, float] = SCALE_RANGE,
    min_visible: float = MIN_VISIBLE,
) -> DetectionTransform:
    """Joint image + boxes transforms for detection, normalised once from the backbone's ``data_config``.

    Eval: resize to the config's input size (``image_size`` square if given), boxes with it; nothing
    random. Train: a horizontal flip (unless ``flip=False``); a resize to the input size times a random
    factor of ``scale_range``; a random crop of the input size (padded with the mean colour where the
    image came out smaller); boxes kept by the rule of `visible_boxes` and clipped; boxes under a pixel
    dropped; a light colour jitter. Every batch gets the same size. ``scale_range=(1, 1)`` leaves the
    fixed resize, without crop.

    Args:
        data_config: The backbone's ``model.data_config``.
        train: Whether to build the augmenting training pipeline.
        image_size: Square side that overrides ``input_size``.
        flip: Random horizontal flips (boxes flipped with the image).
        scale_range: ``(min, max)`` zoom of the training resize, ``0 < min <= max <= 4``. The default,
            `SCALE_RANGE`, is about the spread of multi-scale detection training; torchvision's large
            scale jitter is ``(0.1, 2.0)``, for long schedules.
        min_visible: Fraction of a box's area that must stay in view for it to be kept (`MIN_VISIBLE`).

    Returns:
        ``(PIL image or uint8 tensor, {"boxes": [M, 4] xyxy pixels, "labels": [M]}) -> (float [3, H, W],
        target)``.

    Raises:
        ValueError: A ``scale_range`` or ``min_visible`` out of range (see `check_scale_range`).
        TypeError: A ``flip`` that is not a bool.

    Examples:
        >>> from PIL import Image
        >>> from transferkit.data import DEFAULT_DATA_CONFIG
        >>> t = build_detection_transforms(DEFAULT_DATA_CONFIG, train=False, image_size=32)
        >>> image, target = t(Image.new("RGB", (64, 48)), {"boxes": [[0, 0, 32, 24]], "labels": [1]})
        >>> image.shape, target["boxes"].tolist()
        (torch.Size([3, 32, 32]), [[0.0, 0.0, 16.0, 16.0]])
        >>> t = build_detection_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=32)
        >>> image, target = t(Image.new("RGB", (64, 48)), {"boxes": [[0, 0, 32, 24]], "labels": [1]})
        >>> image.shape, target["boxes"].shape, target["labels"].shape  # zoomed, cropped, still in view
        (torch.Size([3, 32, 32]), torch.Size([1, 4]), torch.Size([1]))
    """
    pre = _resolve_preprocess(data_config, image_size)
    flips, scales = check_flip(flip), check_scale_range(scale_range)
    visible = check_min_visible(min_visible)
    resize = v2.Resize(pre.size, interpolation=pre.interpolation, antialias=True)
    if not train:
        return _BoxTransform(v2.Compose([resize, v2.ClampBoundingBoxes("hard"), *_tensor_steps(pre)]))
    geometry: list[v2.Transform] = [resize]
    if scales != (1.0, 1.0):
        mean_colour = [round(255 * m) for m in pre.mean]  # normalised to 0, as the batch padding is
        geometry = [
            _ZoomResize(pre.size, scales, pre.interpolation),
            v2.RandomCrop(pre.size, pad_if_needed=True, fill={tv_tensors.Image: mean_colour, "others": 0}),
        ]
    steps = [
        *([v2.RandomHorizontalFlip()] if flips else []),
        *geometry,
        _DropHiddenBoxes(visible),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
    ]
    return _BoxTransform(v2.Compose([*steps, *_tensor_steps(pre)]))
