"""A synthetic shapes data set drawn on the fly, and writers that save it in the folder layouts.

``SyntheticShapes`` draws small images of shapes (one kind per class, told apart by geometry only) for
classification or segmentation; ``make_shapes_folder`` and ``make_shapes_segmentation_folder`` write
them out in the layouts that ``image_folder_loaders`` and ``segmentation_folder_loaders`` read, for
demos and tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "SHAPES",
    "SyntheticShapes",
    "make_shapes_folder",
    "make_shapes_segmentation_folder",
]

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
"""The classes `SyntheticShapes` draws, in class-index order (``num_classes=3`` uses the first three).

Examples:
    >>> SHAPES[:3]
    ('circle', 'square', 'triangle')
"""


def _local_outline(kind: str, radius: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape centred on the origin, fitting inside a circle of ``radius``."""
    if kind == "square":
        h = radius * 0.7
        return [(h, h), (-h, h), (-h, -h), (h, -h)]
    if kind == "triangle":
        return [(radius * math.cos(a), radius * math.sin(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if kind == "star":
        radii = [radius, 0.45 * radius] * 5
        return [(r * math.cos(i * math.pi / 5), r * math.sin(i * math.pi / 5)) for i, r in enumerate(radii)]
    # cross: a plus sign with arms a third of the radius thick
    w, r = radius * 0.33, radius
    quarter = [(w, r), (w, w), (r, w)]
    # The other three arms are the first one turned by 90, 180 and 270 degrees.
    return [point for k in range(4) for point in (_turn(x, y, k) for x, y in quarter)]


def _turn(x: float, y: float, quarters: int) -> tuple[float, float]:
    for _ in range(quarters):
        x, y = y, -x
    return x, y


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, centre: tuple[float, float], radius: float, angle: float, fill: Any
) -> None:
    cx, cy = centre
    if kind in ("circle", "ring"):
        r = radius * 0.85
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=max(2, round(r * 0.35)))
        return
    cos, sin = math.cos(angle), math.sin(angle)
    points = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in _local_outline(kind, radius)]
    draw.polygon(points, fill=fill)


def _contrasting_colour(rng: random.Random, avoid: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """A random colour at least 250 apart (summed over channels) from every colour in ``avoid``."""
    while True:
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if all(sum(abs(a - b) for a, b in zip(colour, other, strict=True)) >= 250 for other in avoid):
            return colour


class SyntheticShapes(Dataset):
    """Images of simple shapes (circle, square, triangle, cross, star, ring) drawn on the fly.

    Sample ``i`` depends only on ``(seed, i)``: the background and shape colours (always well apart),
    position, size and a rotation of up to about 25 degrees vary with both, and the class is
    ``i % num_classes`` (balanced). Classes differ only in geometry, never in colour, so a model has to
    learn shape; a small CNN does within a few epochs (about 500 images at 32 px).

    Classification items are ``(image [3, H, W] float, label int)``. Segmentation items are
    ``(image [3, H, W] float, mask [H, W] long)`` where the mask is 0 for background and ``c + 1`` for
    pixels of shape kind ``c``; images hold one or two shapes (the first of kind ``i % num_classes``).
    A segmentation model therefore needs ``num_classes + 1`` outputs, which is ``len(dataset.classes)``.

    Args:
        num_samples: Dataset length.
        image_size: Square side in pixels (at least 16).
        num_classes: Number of shape kinds, 1 to ``len(SHAPES)``.
        task: ``"classification"`` or ``"segmentation"``.
        seed: Selects the whole set of images.
        transform: Replaces the default conversion: called on the PIL image (classification), or on
            ``(image, mask)`` PIL images (segmentation), e.g. ``build_transforms(cfg, train=True)`` or
            ``build_segmentation_transforms(cfg, train=True)``. ``normalize`` is then not used.
        normalize: Normalise with ImageNet mean/std (otherwise values are in [0, 1]).

    Examples:
        >>> ds = SyntheticShapes(100, image_size=32, num_classes=3, seed=0)
        >>> image, label = ds[4]
        >>> image.shape, label, ds.classes[label]
        (torch.Size([3, 32, 32]), 1, 'square')
        >>> seg = SyntheticShapes(10, image_size=32, task="segmentation")
        >>> image, mask = seg[0]
        >>> mask.shape, mask.dtype, len(seg.classes)  # mask values in [0, 4)
        (torch.Size([32, 32]), torch.int64, 4)
    """

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int = 64,
        num_classes: int = 3,
        task: str = "classification",
        seed: int = 0,
        transform: Callable[..., Any] | None = None,
        normalize: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(
                f"num_classes must be in [1, {len(SHAPES)}] (shape kinds {SHAPES}), got {num_classes}."
            )
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}.")
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.task = task
        self.seed = seed
        self.transform = transform
        self.normalize = normalize
        shapes = list(SHAPES[:num_classes])
        self.classes = shapes if task == "classification" else ["background", *shapes]

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[Image.Image, Image.Image, int]:
        """Draws sample ``index`` as PIL images ``(RGB image, L mask)`` and the class of its first shape."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} samples.")
        # A string seed is hashed with SHA-512, so it is stable across runs and processes.
        rng = random.Random(f"transferkit.SyntheticShapes:{self.seed}:{index}")
        size = self.image_size
        background = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (size, size), background)
        mask = Image.new("L", (size, size), 0)
        label = index % self.num_classes
        if self.task == "classification":
            kinds, radius_range = [label], (0.28, 0.45)
        else:
            extra = [rng.randrange(self.num_classes) for _ in range(rng.randrange(2))]
            kinds, radius_range = [label, *extra], (0.15, 0.3)
        colours = [background]
        for kind in kinds:
            colour = _contrasting_colour(rng, colours)
            colours.append(colour)
            radius = rng.uniform(*radius_range) * size
            centre = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
            # Modest rotations (about 25 degrees) keep small sets learnable: a square stays a square.
            angle = rng.uniform(-0.45, 0.45)
            _draw_shape(ImageDraw.Draw(image), SHAPES[kind], centre, radius, angle, colour)
            _draw_shape(ImageDraw.Draw(mask), SHAPES[kind], centre, radius, angle, kind + 1)
        return image, mask, label

    def _to_tensor(self, image: Image.Image) -> Tensor:
        tensor = TF.pil_to_tensor(image).float().div_(255)
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD) if self.normalize else tensor

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask, label = self.render(index)
        if self.task == "classification":
            return (self.transform(image) if self.transform else self._to_tensor(image)), label
        if self.transform:
            return self.transform(image, mask)
        return self._to_tensor(image), torch.from_numpy(np.array(mask, dtype=np.int64))


# --------------------------------------------------------------------------- writers


_MASK_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200, 245, 130, 48, 145, 30, 180, 240, 50, 230]


def _prepare_split_dir(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; write the synthetic set to a new folder.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_shapes_folder(
    root: str | Path,
    *,
    num_classes: int = 3,
    per_class: Mapping[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
    format: str = "jpg",
) -> Path:
    """Writes a ``SyntheticShapes`` classification set as ``root/<split>/<shape>/<index>.<format>``.

    Splits draw disjoint samples, so val never repeats a train image.

    Args:
        root: Output folder (created); its split folders must not hold files yet.
        num_classes: Number of shape kinds (class folders ``circle``, ``square``, ...).
        per_class: Images per class for each split; default ``{"train": 20, "val": 10}``.
        image_size: Square side in pixels.
        seed: Selects the images.
        format: ``"jpg"`` or ``"png"``.

    Returns:
        ``root`` as a ``Path``, ready for ``image_folder_loaders``.

    Examples:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_folder(tmp.name, num_classes=2, per_class={"train": 5, "val": 2})
        >>> sorted(p.name for p in (root / "train").iterdir())
        ['circle', 'square']
        >>> len(list((root / "val" / "square").iterdir()))
        2
    """
    if format not in ("jpg", "png"):
        raise ValueError(f"format must be 'jpg' or 'png', got {format!r}.")
    per_class = {"train": 20, "val": 10} if per_class is None else dict(per_class)
    root = Path(root)
    shapes = SyntheticShapes(
        sum(per_class.values()) * num_classes, image_size=image_size, num_classes=num_classes, seed=seed
    )
    save_options: dict[str, Any] = {"quality": 95} if format == "jpg" else {}
    start = 0
    for split, count in per_class.items():
        split_dir = _prepare_split_dir(root / split)
        for name in shapes.classes:
            (split_dir / name).mkdir()
        # Each split takes a run of count * num_classes indices: count images of every class.
        for index in range(start, start + count * num_classes):
            image, _, label = shapes.render(index)
            image.save(split_dir / shapes.classes[label] / f"{index:05d}.{format}", **save_options)
        start += count * num_classes
    return root


def make_shapes_segmentation_folder(
    root: str | Path,
    *,
    num_classes: int = 3,
    per_split: Mapping[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Writes a ``SyntheticShapes`` segmentation set as ``root/<split>/{images,masks}/<index>.png``.

    Masks are palette PNGs holding class indices (0 background, ``c + 1`` for shape kind ``c``), and
    ``root/classes.txt`` lists the ``num_classes + 1`` class names.

    Args:
        root: Output folder (created); its split folders must not hold files yet.
        num_classes: Number of shape kinds.
        per_split: Images per split; default ``{"train": 32, "val": 16}``.
        image_size: Square side in pixels.
        seed: Selects the images.

    Returns:
        ``root`` as a ``Path``, ready for ``segmentation_folder_loaders``.

    Examples:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_segmentation_folder(tmp.name, per_split={"train": 8, "val": 4})
        >>> (root / "classes.txt").read_text().split()
        ['background', 'circle', 'square', 'triangle']
        >>> len(list((root / "val" / "masks").iterdir()))
        4
    """
    per_split = {"train": 32, "val": 16} if per_split is None else dict(per_split)
    root = Path(root)
    shapes = SyntheticShapes(
        sum(per_split.values()),
        image_size=image_size,
        num_classes=num_classes,
        task="segmentation",
        seed=seed,
    )
    start = 0
    for split, count in per_split.items():
        split_dir = _prepare_split_dir(root / split)
        (split_dir / "images").mkdir()
        (split_dir / "masks").mkdir()
        for index in range(start, start + count):
            image, mask, _ = shapes.render(index)
            image.save(split_dir / "images" / f"{index:05d}.png")
            mask.putpalette(_MASK_PALETTE)  # turns the L mask into a viewable P mask, same indices
            mask.save(split_dir / "masks" / f"{index:05d}.png")
        start += count
    (root / "classes.txt").write_text("\n".join(shapes.classes) + "\n")
    return root
