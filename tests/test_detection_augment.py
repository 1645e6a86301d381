"""Detection augmentation moves every box exactly with its object's pixels.

Each test draws solid rectangles of unique colours on a black background, with their exact boxes and the
colour's index as the label, runs an augmentation with fixed seeds and compares each output box with the
extent of that colour's pixels in the output image: equal within a pixel (resampling blurs the edges),
the label naming the colour it covers. Boxes cut away are dropped, partly cut ones clipped to what is in
view. The colour jitter is left out of the checked pipelines: it changes the colours that tell the
objects apart, and moves nothing.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.transforms import v2

import transferkit.data.detection_augment
import transferkit.data.detection_mosaic
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    DetectionFolder,
    DetectionMosaic,
    EpochSampler,
    build_detection_transforms,
    detection_folder_loaders,
)
from transferkit.data.detection_augment import MIN_VISIBLE, SCALE_RANGE, visible_boxes

COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
]
PLAIN = {**DEFAULT_DATA_CONFIG, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # outputs stay in [0, 1]
TOLERANCE = 1.0  # pixels between a box and its object's pixels, for resampling


Boxes = list[tuple[int, int, int, int]]


def draw(boxes: Boxes, labels: list[int] | None = None, size: int = 64) -> tuple[Image.Image, dict]:
    """A black image with one rectangle per box, coloured ``COLOURS[label]``, and its target."""
    labels = list(range(len(boxes))) if labels is None else labels
    image = Image.new("RGB", (size, size))
    pen = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        pen.rectangle((x1, y1, x2 - 1, y2 - 1), fill=COLOURS[label])  # PIL includes the far edge
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def geometry(transform):
    """The transform without its colour jitter (see the module docstring)."""
    steps = transform.transform.transforms
    transform.transform.transforms = [step for step in steps if not isinstance(step, v2.ColorJitter)]
    return transform


def train_transform(size: int = 64, **options):
    return geometry(build_detection_transforms(PLAIN, True, size, **options))


def colour_mask(image: Tensor | Image.Image, label: int) -> np.ndarray:
    """Where ``image`` ([3, H, W] in [0, 1], or PIL) shows the colour of ``label``."""
    if isinstance(image, Image.Image):
        pixels = np.asarray(image, dtype=np.float64)
    else:
        pixels = image.permute(1, 2, 0).double().numpy() * 255
    colour = np.array(COLOURS[label])  # more of the colour than of the background: an edge's blend splits
    return np.linalg.norm(pixels - colour, axis=-1) < np.linalg.norm(colour) / 2


def extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The xyxy pixel edges around a mask's pixels, or None when it has none."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def check_boxes(image, target: dict, drawn: list[int]) -> dict[int, int]:
    """Asserts that each box is the extent of its label's pixels; returns the dropped labels' pixel counts."""
    labels = target["labels"].tolist()
    assert len(labels) == len(set(labels)) == len(target["boxes"]) and set(labels) <= set(drawn)
    for box, label in zip(target["boxes"].tolist(), labels, strict=True):
        seen = extent(colour_mask(image, label))
        assert seen is not None, f"the box {box} of label {label} covers none of its pixels"
        off = max(abs(a - b) for a, b in zip(box, seen, strict=True))
        assert off <= TOLERANCE, f"label {label}: box {box} but its pixels span {seen} ({off:.2f} px off)"
    return {label: int(colour_mask(image, label).sum()) for label in drawn if label not in labels}


OBJECTS: Boxes = [(4, 6, 20, 30), (26, 2, 60, 14), (30, 22, 44, 58), (50, 40, 62, 62), (2, 40, 22, 60)]


# --------------------------------------------------------------------------------------- the check
def test_the_check_fails_when_a_box_moves_without_its_pixels() -> None:
    image, target = draw(OBJECTS)
    pixels = v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True)
    assert check_boxes(pixels, target, [0, 1, 2, 3, 4]) == {}
    for moved in ([0, 2, 0, 2], [0, 0, -2, 0]):
        wrong = {
            "boxes": target["boxes"] + torch.tensor([moved] + [[0, 0, 0, 0]] * 4),
            "labels": target["labels"],
        }
        with pytest.raises(AssertionError, match="label 0: box"):
            check_boxes(pixels, wrong, [0, 1, 2, 3, 4])
    swapped = {"boxes": target["boxes"], "labels": torch.tensor([1, 0, 2, 3, 4])}
    with pytest.raises(AssertionError, match="px off"):
        check_boxes(pixels, swapped, [0, 1, 2, 3, 4])


# -------------------------------------------------------------------------------------- eval, flip
def test_eval_is_deterministic_and_resizes_boxes_with_their_pixels() -> None:
    image, target = draw(OBJECTS)
    transform = build_detection_transforms(PLAIN, False, 48)
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outputs.append(transform(image, target))
    (a, ta), (b, tb) = outputs
    assert (
        torch.equal(a, b)
        and torch.equal(ta["boxes"], tb["boxes"])
        and torch.equal(ta["labels"], tb["labels"])
    )
    assert a.shape == (3, 48, 48) and check_boxes(a, ta, [0, 1, 2, 3, 4]) == {}
    assert torch.equal(ta["boxes"], target["boxes"] * 0.75)


def test_flip_moves_boxes_with_their_pixels() -> None:
    image, target = draw(OBJECTS)
    transform = train_transform(scale_range=(1.0, 1.0))
    firsts = set()
    for seed in range(6):
        torch.manual_seed(seed)
        pixels, out = transform(image, target)
        assert check_boxes(pixels, out, [0, 1, 2, 3, 4]) == {}  # nothing is cut: every box stays
        firsts.add(tuple(out["boxes"][0].tolist()))
    assert firsts == {(4.0, 6.0, 20.0, 30.0), (44.0, 6.0, 60.0, 30.0)}


# ---------------------------------------------------------------------------------- scale and crop
@pytest.mark.parametrize("scale_range", [SCALE_RANGE, (0.5, 0.7), (1.4, 2.0)])
def test_scale_jitter_and_crop_move_boxes_with_their_pixels(scale_range) -> None:
    image, target = draw(OBJECTS)
    transform = train_transform(scale_range=scale_range)
    for seed in range(8):
        torch.manual_seed(seed)
        pixels, out = transform(image, target)
        assert pixels.shape == (3, 64, 64)
        check_boxes(pixels, out, [0, 1, 2, 3, 4])
        if scale_range[1] < 1:  # zoomed out: the whole image is in view, every box with it
            assert len(out["boxes"]) == 5


def test_boxes_cut_away_are_dropped_and_those_partly_cut_clipped() -> None:
    """Zoom 2 then a crop of a quarter of the image: a box stays when a quarter of it is in view."""
    image, target = draw(OBJECTS)
    transform = train_transform(scale_range=(2.0, 2.0), flip=False)
    areas = [4 * (x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in OBJECTS]  # each object's area at zoom 2
    cases = set()
    for seed in range(40):
        torch.manual_seed(seed)
        pixels, out = transform(image, target)
        dropped = check_boxes(pixels, out, [0, 1, 2, 3, 4])
        for label, box in zip(out["labels"].tolist(), out["boxes"].tolist(), strict=True):
            shown = (box[2] - box[0]) * (box[3] - box[1])
            assert shown >= MIN_VISIBLE * areas[label] - 1e-3
            cases.add("whole" if shown == areas[label] else "clipped")
            if shown < areas[label]:  # clipped boxes end at the image's edge, where their pixels are cut
                assert 0.0 in box[:2] or 64.0 in box[2:]
        for label, count in dropped.items():
            assert count < MIN_VISIBLE * areas[label] + 64  # a visible sliver, with a blurred edge at most
            cases.add("dropped in part" if count else "dropped")
    assert cases == {"whole", "clipped", "dropped in part", "dropped"}


def test_min_visible_sets_which_partly_cut_boxes_stay() -> None:
    image, target = draw([(0, 0, 32, 32)])  # at zoom 2 with crop offset 48: 16 x 16 of 64 x 64 in view
    for min_visible, kept in ((0.0, 1), (0.06, 1), (0.07, 0), (1.0, 0)):
        transform = train_transform(scale_range=(2.0, 2.0), flip=False, min_visible=min_visible)
        crop = transform.transform.transforms[1]  # the crop's corner, pinned at (48, 48)
        crop.make_params = lambda flat, crop=crop: {
            **v2.RandomCrop.make_params(crop, flat),
            "top": 48,
            "left": 48,
        }
        pixels, out = transform(image, target)
        dropped = check_boxes(pixels, out, [0])
        assert len(out["boxes"]) == kept and (dropped == {} if kept else 240 < dropped[0] <= 256)
        if kept:
            assert out["boxes"].tolist() == [[0.0, 0.0, 16.0, 16.0]]


def test_visible_boxes_keeps_clips_and_drops_by_area_in_view() -> None:
    boxes = torch.tensor([[2.0, 2, 6, 6], [-4, 0, 4, 4], [-7, 0, 1, 4], [10, 0, 14, 4], [-2, -2, 2, 2]])
    kept, keep = visible_boxes(boxes, (8, 8), 0.25)
    assert keep.tolist() == [True, True, False, False, True]
    assert kept.tolist() == [[2, 2, 6, 6], [0, 0, 4, 4], [0, 0, 2, 2]]


# ------------------------------------------------------------------------------------------- mosaic
SCENES = [
    [(4, 4, 28, 24)],
    [(8, 30, 56, 60), (40, 2, 60, 20)],
    [(20, 10, 44, 50)],
    [(2, 2, 62, 12), (10, 30, 30, 62)],
]
LABELS = [[0], [1, 2], [3], [4, 5]]


def _mosaic_samples() -> list[tuple[Image.Image, dict]]:
    return [draw(boxes, labels) for boxes, labels in zip(SCENES, LABELS, strict=True)]


def test_mosaic_tiles_four_images_with_their_boxes() -> None:
    samples, mosaic = _mosaic_samples(), DetectionMosaic((64, 64), p=1.0)
    drawn = {label: box for boxes, labels in zip(SCENES, LABELS) for box, label in zip(boxes, labels)}
    cases = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = mosaic(samples)
        assert image.size == (64, 64)
        dropped = check_boxes(image, target, [0, 1, 2, 3, 4, 5])
        for label, (x1, y1, x2, y2) in zip(target["labels"].tolist(), target["boxes"].tolist()):
            a1, b1, a2, b2 = drawn[label]  # a tile scales its image alike in x and y: a cut changes the shape
            cut = abs((x2 - x1) / (y2 - y1) - (a2 - a1) / (b2 - b1)) > 0.1 * (a2 - a1) / (b2 - b1)
            cases.add("clipped" if cut else "whole")
        for label, count in dropped.items():  # a tile shrinks its image to 3/4 of its side at most
            x1, y1, x2, y2 = drawn[label]
            assert count < MIN_VISIBLE * 0.75**2 * (x2 - x1) * (y2 - y1) + 32
            cases.add("dropped")
    assert cases == {"whole", "clipped", "dropped"}


def test_mosaic_then_the_training_transform_keeps_boxes_on_their_pixels() -> None:
    samples, mosaic = _mosaic_samples(), DetectionMosaic((64, 64), p=1.0)
    transform = train_transform()
    for seed in range(8):
        torch.manual_seed(seed)
        pixels, out = transform(*mosaic(samples))
        check_boxes(pixels, out, [0, 1, 2, 3, 4, 5])


def test_mosaic_picks_itself_and_three_others_with_probability_p() -> None:
    torch.manual_seed(0)
    assert all(DetectionMosaic((8, 8), p=0.0).pick(3, 10) == [3] for _ in range(20))
    picks = [DetectionMosaic((8, 8), p=0.5).pick(3, 10) for _ in range(200)]
    assert {len(p) for p in picks} == {1, 4} and all(p[0] == 3 and max(p) < 10 for p in picks)
    assert all(len(set(p)) == len(p) for p in picks)  # three others, different ones
    few = DetectionMosaic((8, 8)).pick(0, 2)  # two samples: four tiles need repeats
    assert len(few) == 4 and few[0] == 0 and set(few) <= {0, 1}
    assert 60 < sum(len(p) == 4 for p in picks) < 140


def _png_coco_folder(root: Path) -> Path:
    """The four mosaic scenes as a COCO train split of PNG files (exact colours)."""
    (root / "train" / "images").mkdir(parents=True)
    images, annotations = [], []
    for i, ((image, target), labels) in enumerate(zip(_mosaic_samples(), LABELS, strict=True)):
        image.save(root / "train" / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 64})
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), labels, strict=True):
            bbox = [x1, y1, x2 - x1, y2 - y1]
            annotations.append({"id": len(annotations), "image_id": i, "category_id": label, "bbox": bbox})
    categories = [{"id": k, "name": f"colour{k}"} for k in range(6)]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / "train" / "annotations.json").write_text(json.dumps(document))
    return root


def test_the_folder_draws_its_mosaics_from_the_sample_seed(tmp_path: Path) -> None:
    root = _png_coco_folder(tmp_path)
    folder = DetectionFolder(root / "train", mosaic=DetectionMosaic((64, 64), p=1.0))
    for index in EpochSampler(len(folder), seed=3):
        (image, target), (again, same) = folder[index], folder[index]
        assert np.array_equal(np.asarray(image), np.asarray(again)) and torch.equal(
            target["boxes"], same["boxes"]
        )
        check_boxes(image, target, [0, 1, 2, 3, 4, 5])  # the four scenes, each once
    loaders = detection_folder_loaders(root, data_config=PLAIN, image_size=48, batch_size=4, mosaic=1.0)
    images, targets = next(iter(loaders["train"]))
    assert images.shape == (4, 3, 48, 48) and loaders["train"].dataset.mosaic.size == (48, 48)


# ----------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scale_range": (1.5, 0.5)}, r"scale_range is \(min, max\).*whose min is above its max"),
        ({"scale_range": (0.0, 1.0)}, r"scale_range .*outside \(0, 4\]"),
        ({"scale_range": 1.2}, r"scale_range is \(min, max\)"),
        ({"min_visible": 1.5}, r"min_visible is the fraction .* from 0 to 1; got 1.5"),
        ({"mosaic": True}, r"mosaic is the probability .* got True"),
        ({"mosaic": 0.5, "augment": False}, r"mosaic=0.5 is an augmentation.*pass mosaic=0 or augment=True"),
    ],
)
def test_bad_options_name_what_is_wrong(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detection_folder_loaders(tmp_path, **options)


@pytest.mark.parametrize(
    "module",
    [transferkit.data.detection_augment, transferkit.data.detection_mosaic],
    ids=lambda m: m.__name__,
)
def test_doctests_hold(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
