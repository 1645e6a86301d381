"""Training augmentations by name, and batch-level mixup / cutmix, from torchvision's transforms v2.

``augment`` names what the training split gets on top of resizing and normalisation:

- ``"none"``: the evaluation transform (resize, centre crop), what ``cache_features=True`` needs;
- ``"light"``: a random resized crop of `CROP_SCALE` of the area (the default, ``augment=True``);
  the loaders' ``flip=True`` adds a horizontal flip (photos whose mirror image is the same class) and
  ``crop_scale`` sets the crop's area range (`check_crop_scale`). The default is the one that hurt
  least in ``benchmarks/bench_recipes.py --augment``: a flip turns a digit into another digit or none,
  and a crop down to 35 % cuts away what tells small grey images apart;
- ``"randaugment"``, ``"trivialaugment"``, ``"autoaugment"`` (ImageNet policy): light plus that policy;
- ``"randomerasing"``: light plus RandomErasing after normalisation.

Several may be joined with ``+`` (``"trivialaugment+randomerasing"``). The policies move pixels
without moving masks, so segmentation (and detection) accept only the geometric choices, ``none`` and
``light``, which the joint transforms apply to image and mask alike.

`MixCollate` is a DataLoader ``collate_fn`` that mixes whole batches (MixUp, CutMix or either at
random); the targets become class probabilities ``[N, K]``, which the Trainer's cross-entropy takes as
they are.

Examples:
    >>> parse_augment("trivialaugment+randomerasing")
    ('light', 'trivialaugment', 'randomerasing')
    >>> images, targets = MixCollate(num_classes=3, mixup=0.2)([(torch.rand(3, 8, 8), 1)] * 4)
    >>> images.shape, targets.shape  # soft targets: one probability per class
    (torch.Size([4, 3, 8, 8]), torch.Size([4, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate
from torchvision.transforms import v2

__all__ = [
    "AUGMENTATIONS",
    "GEOMETRIC_AUGMENTATIONS",
    "MixCollate",
    "CROP_SCALE",
    "check_crop_scale",
    "check_range",
    "check_flip",
    "parse_augment",
    "policy_steps",
]

AUGMENTATIONS = ("none", "light", "randaugment", "trivialaugment", "autoaugment", "randomerasing")
GEOMETRIC_AUGMENTATIONS = ("none", "light")
_POLICIES = {
    "randaugment": lambda: v2.RandAugment(),
    "trivialaugment": lambda: v2.TrivialAugmentWide(),
    "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
}


def parse_augment(
    augment: bool | str | Sequence[str], *, allowed: Sequence[str] = AUGMENTATIONS
) -> tuple[str, ...]:
    """The augmentation names ``augment`` asks for, the base (``none`` or ``light``) first.

    Raises:
        ValueError: An unknown name, ``none`` combined with others, or a name outside ``allowed``.
    """
    if isinstance(augment, bool):
        return ("light",) if augment else ("none",)
    names = augment.split("+") if isinstance(augment, str) else list(augment)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown augment {augment!r}; use one of {list(AUGMENTATIONS)}, several joined with '+', "
            "or True / False"
        )
    if "none" in names and len(set(names)) > 1:
        raise ValueError(f"augment {augment!r} combines 'none' with augmentations; pick one or the other")
    refused = [n for n in names if n not in allowed]
    if refused:
        raise ValueError(
            f"augment {refused} would move the image's pixels but not its mask or boxes; for this task "
            f"use one of {list(allowed)}"
        )
    if names == ["none"]:
        return ("none",)
    extras = [n for n in dict.fromkeys(names) if n != "light"]
    return ("light", *extras)


CROP_SCALE = (0.7, 1.0)  # the classification loaders' default area range of the random crop


def check_flip(flip: Any) -> bool:
    """``flip`` if it is a bool (a string such as ``"no"`` would be true).

    Raises:
        TypeError: Anything but True or False.
    """
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be True or False, got {flip!r}")
    return flip


def check_crop_scale(crop_scale: Any) -> tuple[float, float]:
    """``crop_scale`` as a ``(min, max)`` pair of floats: the range of the random crop's area, as a
    fraction of the image's area, with ``0 < min <= max <= 1``.

    Raises:
        ValueError: Not a pair of finite numbers in that range, or ``min > max``.

    Examples:
        >>> check_crop_scale((0.5, 1))
        (0.5, 1.0)
    """
    usage = (
        "crop_scale is (min, max), fractions of the image's area with 0 < min <= max <= 1, e.g. (0.35, 1.0)"
    )
    return check_range(crop_scale, 1.0, usage)


def check_range(value: Any, top: float, usage: str) -> tuple[float, float]:
    """``value`` as a ``(min, max)`` pair of floats with ``0 < min <= max <= top``; a ValueError that starts
    with ``usage`` and says what is wrong otherwise (`check_crop_scale`, the detection ``scale_range``).

    Examples:
        >>> check_range([0.5, 2], 4, "a (min, max) pair")
        (0.5, 2.0)
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{usage}; got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        raise ValueError(f"{usage}; got {value!r}, which is not a pair of numbers")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= top or not 0 < high <= top:
        raise ValueError(f"{usage}; got {value!r}, outside (0, {top:g}]")
    if low > high:
        raise ValueError(f"{usage}; got {value!r}, whose min is above its max")
    return low, high


def policy_steps(names: Sequence[str]) -> tuple[list[v2.Transform], list[v2.Transform]]:
    """The v2 steps ``names`` add: ``(on the uint8 image, after normalisation)``."""
    before = [_POLICIES[n]() for n in names if n in _POLICIES]
    after = [v2.RandomErasing(p=0.25, value=0)] if "randomerasing" in names else []
    return before, after


class MixCollate:
    """A ``collate_fn`` that collates as usual, then mixes the batch with MixUp and/or CutMix.

    With both alphas set, each batch gets one of the two at random (as timm and torchvision's references
    do). Picklable, so it works with worker processes.

    Args:
        num_classes: K: integer labels become probabilities ``[N, K]``.
        mixup: MixUp's Beta(alpha, alpha) parameter (0: off).
        cutmix: CutMix's alpha (0: off).

    Raises:
        ValueError: Both alphas are 0, or one is negative.
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        if mixup < 0 or cutmix < 0 or mixup == cutmix == 0:
            raise ValueError(f"mixup and cutmix must be >= 0 with at least one > 0, got {mixup} and {cutmix}")
        mixers: list[v2.Transform] = []
        if mixup:
            mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix:
            mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix

    def __call__(self, batch: list[Any]) -> tuple[Tensor, Tensor]:
        images, targets = default_collate(batch)
        return self.mix(images, torch.as_tensor(targets).long())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, mixup={self.mixup}, cutmix={self.cutmix})"
        )
