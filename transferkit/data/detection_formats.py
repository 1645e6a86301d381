"""Reading COCO and Pascal VOC annotations with the standard library, every box checked against its image.

`transferkit.data.detection.DetectionFolder` calls `read_coco` or `read_voc` on a split folder; both return
one `Sample` per image (its boxes as ``xyxy`` pixels, its labels as indices into the classes) and the
class names. See `transferkit.data.detection` for the two layouts.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

from .folders import _files_by_stem

__all__ = ["Sample", "read_coco", "read_voc"]

_TOLERANCE = 1.0  # pixels a box may reach past its image (rounding in annotation tools) before it is an error


class Sample(NamedTuple):
    """One image of a split: its file, boxes and labels, and the size its annotations declare."""

    file: Path
    boxes: Tensor  # [M, 4] xyxy pixels
    labels: Tensor  # [M] class indices
    size: tuple[int, int] | None  # (width, height) the annotations declare


def _checked_box(box: Sequence[float], size: tuple[int, int], what: str) -> list[float]:
    """``box`` (xyxy) clipped to the image, or a ValueError naming ``what`` when it does not fit."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = size
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"{what}: box {[x1, y1, x2, y2]} has x2 <= x1 or y2 <= y1; fix or remove it")
    if x1 < -_TOLERANCE or y1 < -_TOLERANCE or x2 > width + _TOLERANCE or y2 > height + _TOLERANCE:
        raise ValueError(
            f"{what}: box {[x1, y1, x2, y2]} (x1, y1, x2, y2) lies outside the {width}x{height} image; "
            "boxes are pixel coordinates inside the image"
        )
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]


def read_coco(split: Path, classes: Sequence[str] | None) -> tuple[list[Sample], list[str]]:
    """The images of ``split/annotations.json`` (crowd objects dropped) and the class names.

    Categories map to ``classes`` by name (default: the categories in id order).

    Raises:
        ValueError: An unreadable file, an annotation whose image or category is unknown, a category
            missing from ``classes``, or a box that does not fit its image (naming the annotation id).
        FileNotFoundError: An image the file lists is not in ``split/images``.
    """
    path = split / "annotations.json"
    try:
        data = json.loads(path.read_text())
        images, annotations = data["images"], data.get("annotations", [])
        categories = sorted(data["categories"], key=lambda c: c["id"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"cannot read the COCO file {path}: {err!r}; it needs images and categories"
        ) from err
    names = [str(c["name"]) for c in categories]
    classes = names if classes is None else list(classes)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"{path} has categories {unknown} that the train split lacks (classes: {classes})")
    index_of = {c["id"]: classes.index(str(c["name"])) for c in categories}
    by_id: dict[Any, dict[str, Any]] = {}
    for image in images:
        if image["id"] in by_id:
            raise ValueError(f"{path}: image id {image['id']} appears twice in 'images'")
        file = split / "images" / image["file_name"]
        if not file.is_file():
            raise FileNotFoundError(f"{path}: image {image['id']} names {file}, which does not exist")
        by_id[image["id"]] = {
            "file": file,
            "size": (int(image["width"]), int(image["height"])),
            "objects": [],
        }
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "bbox" not in ann:
            raise ValueError(f"{path}: annotation {i} is {ann!r}; COCO annotations are dicts with a bbox")
        where = f"annotation {ann.get('id')} in {path}"
        if ann.get("image_id") not in by_id:
            raise ValueError(f"{where} refers to image_id {ann.get('image_id')!r}, which 'images' lacks")
        if ann.get("category_id") not in index_of:
            raise ValueError(f"{where} has category_id {ann.get('category_id')!r}, which 'categories' lacks")
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not single objects: COCO's own evaluation ignores them too
        image = by_id[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        box = _checked_box([x, y, x + w, y + h], image["size"], f"{where} ({image['file'].name})")
        image["objects"].append((box, index_of[ann["category_id"]]))
    samples = [_sample(im["file"], im["objects"], im["size"]) for im in by_id.values()]
    return samples, classes


def _voc_objects(xml: Path) -> tuple[list[tuple[str, list[float]]], tuple[int, int] | None]:
    """``[(name, [x1, y1, x2, y2])]`` of the non-difficult objects, and the declared ``(width, height)``."""
    try:
        root = ET.parse(xml).getroot()
        size = root.find("size")
        declared = None
        if size is not None and size.findtext("width") and size.findtext("height"):
            declared = (int(float(_text(size, "width"))), int(float(_text(size, "height"))))
        objects = []
        for i, obj in enumerate(root.iter("object")):
            if (obj.findtext("difficult") or "0").strip() == "1":
                continue
            bndbox = obj.find("bndbox")
            name = obj.findtext("name")
            if bndbox is None or not name:
                raise ValueError(f"object {i} has no name or no bndbox")
            xmin, ymin, xmax, ymax = (float(_text(bndbox, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((name.strip(), [xmin - 1, ymin - 1, xmax, ymax]))
    except (ET.ParseError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read the VOC annotation {xml}: {err}") from err
    return objects, declared


def _text(element: ET.Element, tag: str) -> str:
    """The text of ``element``'s child ``tag``; ValueError when there is no such child."""
    text = element.findtext(tag)
    if text is None:
        raise ValueError(f"<{element.tag}> has no <{tag}>")
    return text


def read_voc(split: Path, classes: Sequence[str] | None) -> tuple[list[Sample], list[str]]:
    """The images of ``split/images`` with ``split/annotations/<stem>.xml`` (difficult objects dropped).

    Classes: ``classes`` when given, else the sorted object names of this split.

    Raises:
        ValueError: An image without its XML (or an XML without its image), an unreadable XML, an object
            of an unknown class, or a box that does not fit its image (naming the file and the object).
    """
    images = _files_by_stem(split / "images")
    xmls = {p.stem: p for p in sorted((split / "annotations").glob("*.xml"))}
    missing, orphans = sorted(set(images) - set(xmls)), sorted(set(xmls) - set(images))
    if missing:
        raise ValueError(
            f"no annotation for image {images[missing[0]]} ({len(missing)} in all); each image needs "
            f"{split / 'annotations'}/<same stem>.xml (with no <object> for an image without objects)"
        )
    if orphans:
        raise ValueError(f"annotation {xmls[orphans[0]]} has no image in {split / 'images'}")
    parsed = {stem: _voc_objects(xmls[stem]) for stem in sorted(images)}
    if classes is None:
        classes = sorted({name for objects, _ in parsed.values() for name, _ in objects})
    samples = []
    for stem, (objects, declared) in parsed.items():
        size = declared
        if size is None:
            with Image.open(images[stem]) as image:
                size = image.size
        kept = []
        for i, (name, box) in enumerate(objects):
            where = f"object {i} ({name!r}) in {xmls[stem]}"
            if name not in classes:
                raise ValueError(f"{where} is not one of the classes {list(classes)}")
            kept.append((_checked_box(box, size, where), list(classes).index(name)))
        samples.append(_sample(images[stem], kept, size))
    return samples, list(classes)


def _sample(file: Path, objects: list[tuple[list[float], int]], size: tuple[int, int] | None) -> Sample:
    boxes = torch.tensor([box for box, _ in objects], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([label for _, label in objects], dtype=torch.int64)
    return Sample(file, boxes, labels, size)
