"""Synthetic shapes with boxes: several objects per image, drawn on the fly or written as COCO / VOC.

The shapes are `transferkit.data.synthetic`'s (same drawing, same contrasting colours); each image holds
one to ``max_objects`` of them, placed so that they do not overlap, and each box is the exact pixel
extent of its shape. `make_shapes_detection_folder` writes them in the layouts that
`transferkit.data.detection_folder_loaders` reads.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .synthetic import SHAPES, _contrasting_colour, _draw_shape, _prepare_split_dir
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SyntheticShapesDetection", "make_shapes_detection_folder"]

Objects = list[tuple[int, tuple[int, int, int, int]]]  # (class, (x1, y1, x2, y2)) per object


class SyntheticShapesDetection(Dataset):
    """Images of one to ``max_objects`` non-overlapping shapes, each with its box and class.

    Sample ``i`` depends only on ``(seed, i)``; its first shape is of class ``i % num_classes`` (so the
    classes are balanced), the others random. Shapes are told apart by geometry, never by colour.

    Items are ``(image [3, H, W] float, {"boxes": [M, 4] xyxy pixels float, "labels": [M] int64})``.

    Args:
        num_samples: Dataset length.
        image_size: Square side in pixels (at least 32).
        num_classes: Number of shape kinds, 1 to ``len(SHAPES)``.
        max_objects: Most objects per image (at least 1).
        seed: Selects the whole set of images.
        transform: Replaces the default conversion: called on ``(PIL image, target)``, e.g.
            ``build_detection_transforms(cfg, train=True)``; ``normalize`` is then not used.
        normalize: Normalise with ImageNet mean/std (otherwise values are in [0, 1]).

    Examples:
        >>> ds = SyntheticShapesDetection(10, image_size=64, num_classes=3, seed=0)
        >>> image, target = ds[0]
        >>> image.shape, target["boxes"].shape[1], int(target["labels"][0]), ds.classes
        (torch.Size([3, 64, 64]), 4, 0, ['circle', 'square', 'triangle'])
    """

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int = 64,
        num_classes: int = 3,
        max_objects: int = 3,
        seed: int = 0,
        transform: Callable[..., Any] | None = None,
        normalize: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels for boxes, got {image_size}.")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [1, {len(SHAPES)}] ({SHAPES}), got {num_classes}.")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}.")
        self.num_samples, self.image_size, self.num_classes = num_samples, image_size, num_classes
        self.max_objects, self.seed, self.transform, self.normalize = max_objects, seed, transform, normalize
        self.classes = list(SHAPES[:num_classes])

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[Image.Image, Objects]:
        """Draws sample ``index``: the RGB image and ``[(class, (x1, y1, x2, y2)), ...]``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} samples.")
        rng = random.Random(f"transferkit.SyntheticShapesDetection:{self.seed}:{index}")
        size = self.image_size
        background = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (size, size), background)
        colours = [background]
        placed: list[tuple[float, float, float]] = []
        objects: Objects = []
        count = rng.randint(1, self.max_objects)
        kinds = [index % self.num_classes] + [rng.randrange(self.num_classes) for _ in range(count - 1)]
        for kind in kinds:
            spot = _free_spot(rng, size, placed)
            if spot is None:
                continue  # no room left: fewer objects in this image
            placed.append(spot)
            colour = _contrasting_colour(rng, colours)
            colours.append(colour)
            centre, radius, angle = spot[:2], spot[2], rng.uniform(-0.45, 0.45)
            _draw_shape(ImageDraw.Draw(image), SHAPES[kind], centre, radius, angle, colour)
            alone = Image.new("L", (size, size), 0)  # the shape's own pixels give its exact box
            _draw_shape(ImageDraw.Draw(alone), SHAPES[kind], centre, radius, angle, 255)
            box = alone.getbbox()
            if box is None:  # every shape covers pixels: its radius is at least a few pixels
                raise RuntimeError(f"sample {index}: a {SHAPES[kind]} drew no pixels")
            objects.append((kind, box))
        return image, objects

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Tensor]]:
        image, objects = self.render(index)
        target = {
            "boxes": torch.tensor([box for _, box in objects], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([kind for kind, _ in objects], dtype=torch.int64),
        }
        if self.transform is not None:
            return self.transform(image, target)
        tensor = TF.pil_to_tensor(image).float().div_(255)
        return (TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD) if self.normalize else tensor), target


def _free_spot(
    rng: random.Random, size: int, placed: list[tuple[float, float, float]]
) -> tuple[float, float, float] | None:
    """A ``(cx, cy, radius)`` whose circle stays in the image and clear of ``placed``, or None."""
    for _ in range(30):
        radius = rng.uniform(0.12, 0.22) * size
        cx, cy = rng.uniform(radius, size - radius), rng.uniform(radius, size - radius)
        if all(math.dist((cx, cy), (x, y)) > radius + r + 2 for x, y, r in placed):
            return cx, cy, radius
    return None


def _write_voc(path: Path, file_name: str, size: int, objects: Objects, classes: list[str]) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    dims = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, key).text = str(value)
    for kind, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[kind]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, key).text = str(value)  # VOC counts pixels from 1
    ET.ElementTree(root).write(path)


def make_shapes_detection_folder(
    root: str | Path,
    *,
    num_classes: int = 3,
    per_split: Mapping[str, int] | None = None,
    image_size: int = 64,
    max_objects: int = 3,
    seed: int = 0,
    format: str = "coco",
) -> Path:
    """Writes a `SyntheticShapesDetection` set as a COCO or Pascal VOC detection folder.

    COCO: ``root/<split>/images/<index>.png`` + ``root/<split>/annotations.json`` (category ids from 1).
    VOC: the same images + ``root/<split>/annotations/<index>.xml``, and ``root/classes.txt``.
    Splits draw disjoint samples.

    Args:
        root: Output folder (created); its split folders must not hold files yet.
        num_classes: Number of shape kinds.
        per_split: Images per split; default ``{"train": 32, "val": 16}``.
        image_size: Square side in pixels.
        max_objects: Most objects per image.
        seed: Selects the images.
        format: ``"coco"`` or ``"voc"``.

    Returns:
        ``root`` as a ``Path``, ready for ``detection_folder_loaders``.

    Examples:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_detection_folder(tmp.name, per_split={"train": 4, "val": 2})
        >>> sorted(p.name for p in (root / "val").iterdir())
        ['annotations.json', 'images']
    """
    if format not in ("coco", "voc"):
        raise ValueError(f"format must be 'coco' or 'voc', got {format!r}.")
    per_split = {"train": 32, "val": 16} if per_split is None else dict(per_split)
    root = Path(root)
    shapes = SyntheticShapesDetection(
        sum(per_split.values()),
        image_size=image_size,
        num_classes=num_classes,
        max_objects=max_objects,
        seed=seed,
    )
    start = 0
    for split, count in per_split.items():
        split_dir = _prepare_split_dir(root / split)
        (split_dir / "images").mkdir()
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        if format == "voc":
            (split_dir / "annotations").mkdir()
        for index in range(start, start + count):
            image, objects = shapes.render(index)
            name = f"{index:05d}.png"
            image.save(split_dir / "images" / name)
            if format == "voc":
                _write_voc(
                    split_dir / "annotations" / f"{index:05d}.xml", name, image_size, objects, shapes.classes
                )
                continue
            images.append({"id": index, "file_name": name, "width": image_size, "height": image_size})
            for kind, (x1, y1, x2, y2) in objects:
                box = [x1, y1, x2 - x1, y2 - y1]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": index, "category_id": kind + 1, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0}
                )  # fmt: skip
        if format == "coco":
            categories = [{"id": k + 1, "name": name} for k, name in enumerate(shapes.classes)]
            coco = {"images": images, "annotations": annotations, "categories": categories}
            (split_dir / "annotations.json").write_text(json.dumps(coco))
        start += count
    if format == "voc":
        (root / "classes.txt").write_text("\n".join(shapes.classes) + "\n")
    return root
