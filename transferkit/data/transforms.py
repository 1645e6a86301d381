"""Transforms that match a backbone's pretrained preprocessing, for classification and segmentation.

A data config (a backbone's ``model.data_config``, or ``DEFAULT_DATA_CONFIG`` for ImageNet) names the
input size, mean, std, interpolation and crop fraction; ``build_transforms`` turns it into a
classification pipeline and ``build_segmentation_transforms`` into a joint image + mask one that crops
and flips both alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from ..preprocessing import (
    DATA_CONFIG_KEYS,
    DEFAULT_DATA_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    resolve_data_config,
)
from .augment import CROP_SCALE, check_crop_scale, check_flip, parse_augment, policy_steps

__all__ = [
    "DEFAULT_DATA_CONFIG",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_segmentation_transforms",
    "build_transforms",
    "evaluation_geometry",
]

ImagePair = tuple[Tensor, Tensor]
JointTransform = Callable[[Image.Image, Image.Image], ImagePair]


class _Preprocess(NamedTuple):
    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode
    crop_pct: float


def _resolve_preprocess(data_config: Mapping[str, Any], image_size: int | None) -> _Preprocess:
    missing = [key for key in ("input_size", "mean", "std") if key not in data_config]
    if missing:
        raise ValueError(
            f"data_config lacks {missing}; pass a backbone's model.data_config or DEFAULT_DATA_CONFIG "
            "(keys: input_size, mean, std, interpolation, crop_pct)."
        )
    # timm's configs hold more keys (crop_mode, ...); the ones a transform here applies are these
    known = {key: data_config[key] for key in DATA_CONFIG_KEYS if key in data_config}
    config = resolve_data_config(known, image_size)
    channels, height, width = config["input_size"]
    if channels not in (1, 3):
        raise ValueError(
            f"data_config input_size {config['input_size']} asks for {channels} channels; image files give 1 "
            "(grayscale) or 3 (RGB). For other channel counts, write a Dataset that returns such tensors."
        )
    interpolation = InterpolationMode(config["interpolation"])
    mean, std, crop_pct = config["mean"], config["std"], config["crop_pct"]
    return _Preprocess(channels, (height, width), mean, std, interpolation, crop_pct)


def _tensor_steps(pre: _Preprocess) -> list[v2.Transform]:
    # A 1-channel model (in_chans=1) sees grey images, whatever the files hold.
    grey = [v2.Grayscale(num_output_channels=1)] if pre.channels == 1 else []
    return [*grey, v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std), v2.ToPureTensor()]


def build_transforms(
    data_config: Mapping[str, Any],
    train: bool,
    image_size: int | None = None,
    *,
    crop_scale: tuple[float, float] = CROP_SCALE,
    flip: bool = False,
    augment: bool | str | Sequence[str] = "light",
) -> v2.Compose:
    """Classification transforms matching a backbone's pretrained preprocessing.

    Train: random resized crop to the input size, horizontal flip (with ``flip=True``), the policies
    ``augment`` names, normalisation. Eval: resize the shorter side to ``size / crop_pct``, centre crop
    to the input size, normalisation.

    Args:
        data_config: The backbone's ``model.data_config`` (``input_size``, ``mean``, ``std`` and
            optionally ``interpolation`` and ``crop_pct``).
        train: Whether to build the augmenting training pipeline.
        image_size: Square side that overrides ``input_size``.
        crop_scale: Area range of the random crop, ``0 < min <= max <= 1``. Far milder than ImageNet's
            (0.08, 1.0) because transfer sets are small and their objects tend to fill the frame.
        flip: Random horizontal flips: True for photos whose mirror image is the same class; off by
            default (digits, text, left / right).
        augment: With ``train``: ``"light"`` (the crop, and the flip), ``"none"``, or policies on top of light
            (``"randaugment"``, ``"trivialaugment"``, ``"autoaugment"``, ``"randomerasing"``, joined
            with ``+``); see `transferkit.data.augment`.

    Returns:
        A ``v2.Compose`` that maps a PIL image (or uint8 tensor) to a float tensor ``[3, H, W]``.

    Raises:
        ValueError: A ``crop_scale`` outside ``0 < min <= max <= 1``, or an unknown ``augment``.
        TypeError: A ``flip`` that is not a bool.

    Examples:
        >>> t = build_transforms(DEFAULT_DATA_CONFIG, train=False, image_size=64)
        >>> t(Image.new("RGB", (100, 80))).shape
        torch.Size([3, 64, 64])
    """
    pre = _resolve_preprocess(data_config, image_size)
    scale, flips = check_crop_scale(crop_scale), check_flip(flip)
    names = parse_augment(augment) if train else ("none",)
    policies, erasing = policy_steps(names)
    if names != ("none",):
        geometry = [
            v2.RandomResizedCrop(pre.size, scale=scale, interpolation=pre.interpolation, antialias=True),
            *([v2.RandomHorizontalFlip()] if flips else []),
            *policies,
        ]
    else:
        resize, crop = evaluation_geometry(data_config, image_size)
        geometry = [v2.Resize(resize, interpolation=pre.interpolation, antialias=True), v2.CenterCrop(crop)]
    return v2.Compose([v2.ToImage(), *geometry, *_tensor_steps(pre), *erasing])


def evaluation_geometry(
    data_config: Mapping[str, Any], image_size: int | None = None, *, center_crop: bool = True
) -> tuple[int | tuple[int, int], tuple[int, int] | None]:
    """The resize and crop of the evaluation transforms: ``(resize, crop)``.

    With ``center_crop`` (classification) a square input resizes the image's shorter side to
    ``floor(side / crop_pct)`` (an int: the aspect ratio is kept), any other input both sides; then the
    centre ``(height, width)`` is cropped. Without it (segmentation, detection) the whole image is resized
    to ``(height, width)`` and nothing is cropped.

    Examples:
        >>> evaluation_geometry(DEFAULT_DATA_CONFIG, 64)
        (73, (64, 64))
        >>> evaluation_geometry(DEFAULT_DATA_CONFIG, 64, center_crop=False)
        ((64, 64), None)
    """
    pre = _resolve_preprocess(data_config, image_size)
    height, width = pre.size
    if not center_crop:
        return (height, width), None
    if height == width:
        return math.floor(height / pre.crop_pct), (height, width)
    return (math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct)), (height, width)


class _PairTransform:
    """Applies one v2 pipeline to an image and its mask together (same crop and flip)."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image, mask: Image.Image | np.ndarray | Tensor) -> ImagePair:
        target = tv_tensors.Mask(torch.as_tensor(np.array(mask, dtype=np.uint8)))
        pixels, target = self.transform(TF.to_image(image), target)
        return pixels, target.long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def build_segmentation_transforms(
    data_config: Mapping[str, Any],
    train: bool,
    image_size: int | None = None,
    *,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip: bool = True,
) -> JointTransform:
    """Joint image + mask transforms for segmentation.

    Train: one random resized crop and horizontal flip (unless ``flip=False``) applied to both (the mask
    with nearest neighbour). Eval: resize both to the input size; unlike classification there is no
    centre crop, so the whole image is scored.

    Args:
        data_config: The backbone's ``model.data_config``.
        train: Whether to build the augmenting training pipeline.
        image_size: Square side that overrides ``input_size``.
        crop_scale: Area range of the random crop, ``0 < min <= max <= 1``.
        flip: Random horizontal flips of image and mask.

    Returns:
        A callable ``(image, mask) -> (float [3, H, W], long [H, W])``; the mask is an index image (PIL
        ``L``/``P``, array or tensor ``[H, W]``) whose values pass through unchanged, 255 included.

    Examples:
        >>> t = build_segmentation_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=32)
        >>> image, mask = t(Image.new("RGB", (48, 40)), Image.new("L", (48, 40)))
        >>> image.shape, mask.shape, mask.dtype
        (torch.Size([3, 32, 32]), torch.Size([32, 32]), torch.int64)
    """
    pre = _resolve_preprocess(data_config, image_size)
    scale, flips = check_crop_scale(crop_scale), check_flip(flip)
    if train:
        geometry = [
            v2.RandomResizedCrop(pre.size, scale=scale, interpolation=pre.interpolation, antialias=True),
            *([v2.RandomHorizontalFlip()] if flips else []),
        ]
    else:
        geometry = [v2.Resize(pre.size, interpolation=pre.interpolation, antialias=True)]
    return _PairTransform(v2.Compose([*geometry, *_tensor_steps(pre)]))
