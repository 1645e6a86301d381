"""Detection data: COCO and VOC folders read with the standard library, box-aware transforms, the padding
collate, synthetic shapes with exact boxes, and bad annotations that name the file and the annotation."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit.data.detection
import transferkit.data.detection_formats
import transferkit.data.synthetic_detection
import transferkit.models.heads.detection
import transferkit.models.heads.detection.fasterrcnn
import transferkit.models.heads.detection.fcos
import transferkit.models.heads.detection.parts
import transferkit.models.heads.detection.retinanet
import transferkit.models.heads.detection.ssdlite
import transferkit.tasks.detection
import transferkit.tasks.detection_metrics
import transferkit.training.running_loss
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    DetectionFolder,
    SyntheticShapesDetection,
    build_detection_transforms,
    collate_detection,
    detection_folder_loaders,
    make_shapes_detection_folder,
    pad_images,
)

MODULES = [
    transferkit.data.detection,
    transferkit.data.detection_formats,
    transferkit.data.synthetic_detection,
    transferkit.tasks.detection_metrics,
    transferkit.models.heads.detection.fcos,
    transferkit.models.heads.detection.retinanet,
    transferkit.models.heads.detection.ssdlite,
    transferkit.models.heads.detection.fasterrcnn,
    transferkit.models.heads.detection.parts,
    transferkit.tasks.detection,
    transferkit.training.running_loss,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_doctests_hold(module) -> None:
    assert doctest.testmod(module).failed == 0


def _coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    split = root / "train"
    (split / "images").mkdir(parents=True)
    for image in images:
        Image.new("RGB", (image["width"], image["height"]), (90, 90, 90)).save(
            split / "images" / image["file_name"]
        )
    data = {"images": images, "annotations": annotations, "categories": categories}
    (split / "annotations.json").write_text(json.dumps(data))
    return split


def _voc(root: Path, objects: list[str], size: tuple[int, int] = (40, 30)) -> Path:
    split = root / "train"
    (split / "images").mkdir(parents=True)
    (split / "annotations").mkdir()
    Image.new("RGB", size).save(split / "images" / "a.png")
    body = "".join(objects)
    xml = f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>"
    (split / "annotations" / "a.xml").write_text(xml)
    return split


def _object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


# ----------------------------------------------------------------------------------------------- COCO
def test_coco_ids_become_contiguous_in_id_order_crowds_go_and_empty_images_stay(tmp_path: Path) -> None:
    images = [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 9, "file_name": "b.png", "width": 40, "height": 30}]  # fmt: skip
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [1, 2, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [5, 5, 20, 20], "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
    ]
    categories = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}]
    ds = DetectionFolder(_coco(tmp_path, images, annotations, categories))
    assert ds.classes == ["car", "dog"] and ds.format == "coco" and len(ds) == 2
    image, target = ds[0]
    assert image.size == (40, 30)
    assert target["boxes"].tolist() == [[1.0, 2.0, 11.0, 7.0], [5.0, 5.0, 25.0, 25.0]]
    assert target["labels"].tolist() == [1, 0]
    assert ds[1][1]["boxes"].shape == (0, 4)  # b.png has no objects, and is kept


@pytest.mark.parametrize(
    "annotation, match",
    [
        ((5, 99, 1, [1, 1, 4, 4]), r"annotation 5 in .*annotations\.json refers to image_id 99"),
        ((6, 1, 1, [10, 1, 0, 4]), r"annotation 6 .*a\.png.*x2 <= x1"),
        ((8, 1, 1, [30, 1, 20, 4]), r"annotation 8 .*outside the 40x30 image"),
        ((4, 1, 2, [1, 1, 4, 4]), r"annotation 4 .*category_id 2"),
    ],
)
def test_bad_coco_annotations_name_the_annotation_and_file(
    tmp_path: Path, annotation: tuple, match: str
) -> None:
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    ann = dict(zip(("id", "image_id", "category_id", "bbox"), annotation))
    split = _coco(tmp_path, images, [ann], [{"id": 1, "name": "thing"}])
    with pytest.raises(ValueError, match=match):
        DetectionFolder(split)


def test_a_box_within_a_pixel_of_the_edge_is_clipped(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-0.5, 0, 40.5, 30.4]}
    ds = DetectionFolder(_coco(tmp_path, images, [annotation], [{"id": 1, "name": "thing"}]))
    assert ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 40.0, 30.0]]


# ------------------------------------------------------------------------------------------------ VOC
def test_voc_is_one_based_and_drops_difficult_objects(tmp_path: Path) -> None:
    split = _voc(tmp_path, [_object("cat", (1, 1, 10, 20)), _object("bird", (5, 5, 9, 9), difficult=1)])
    ds = DetectionFolder(split)
    assert ds.format == "voc" and ds.classes == ["cat"]
    assert ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0]]  # pixels 1..10 are the edges 0..10


def test_voc_names_a_degenerate_object_and_a_missing_annotation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"object 0 \('cat'\) in .*a\.xml.*x2 <= x1"):
        DetectionFolder(_voc(tmp_path / "bad", [_object("cat", (10, 1, 5, 20))]))
    split = _voc(tmp_path / "missing", [_object("cat", (1, 1, 10, 20))])
    Image.new("RGB", (8, 8)).save(split / "images" / "b.png")
    with pytest.raises(ValueError, match=r"no annotation for image .*b\.png"):
        DetectionFolder(split)


def test_a_split_without_annotations_names_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"annotations\.json \(COCO\).*\(Pascal VOC\)"):
        DetectionFolder(tmp_path / "train")


@pytest.mark.parametrize("format", ["coco", "voc"])
def test_both_formats_of_the_synthetic_set_give_the_same_samples(tmp_path: Path, format: str) -> None:
    root = make_shapes_detection_folder(tmp_path, per_split={"train": 4, "val": 2}, format=format)
    loaders = detection_folder_loaders(root, batch_size=2, image_size=64, augment=False)
    shapes = SyntheticShapesDetection(6, seed=0)
    assert loaders["val"].dataset.classes == shapes.classes == ["circle", "square", "triangle"]
    _, targets = next(iter(loaders["val"]))
    for i, target in enumerate(targets):
        expected = shapes[4 + i][1]
        assert torch.equal(target["boxes"], expected["boxes"]) and torch.equal(
            target["labels"], expected["labels"]
        )


def test_val_may_not_add_a_class(tmp_path: Path) -> None:
    root = make_shapes_detection_folder(tmp_path, num_classes=2, per_split={"train": 2})
    make_shapes_detection_folder(tmp_path / "other", num_classes=3, per_split={"val": 6})
    (tmp_path / "other" / "val").rename(tmp_path / "val")
    with pytest.raises(ValueError, match=r"categories \['triangle'\] that the train split lacks"):
        detection_folder_loaders(root)


# ------------------------------------------------------------------------------- transforms, collate
def test_train_transform_flips_and_resizes_boxes_with_the_image() -> None:
    t = build_detection_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=32, scale_range=(1.0, 1.0))
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (0, 0, 16, 64))  # a white band at the left edge
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        x, target = t(image, {"boxes": [[0.0, 0.0, 16.0, 64.0]], "labels": [1]})
        box = target["boxes"][0].tolist()
        seen.add(tuple(box))
        x1 = int(box[0])
        assert x.shape == (3, 32, 32) and x[:, :, x1 : x1 + 8].mean() > x.mean()  # the box follows the band
    assert seen == {(0.0, 0.0, 8.0, 32.0), (24.0, 0.0, 32.0, 32.0)}


def test_boxes_too_small_after_resize_are_dropped_in_training() -> None:
    t = build_detection_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=32, scale_range=(1.0, 1.0))
    _, target = t(
        Image.new("RGB", (320, 320)), {"boxes": [[0.0, 0.0, 5.0, 5.0], [0, 0, 100, 100]], "labels": [0, 1]}
    )
    assert target["labels"].tolist() == [1]


def test_collate_pads_at_the_bottom_and_right_so_boxes_keep_their_pixels() -> None:
    a, b = torch.ones(3, 20, 30), torch.full((3, 25, 10), 2.0)
    target = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([0])}
    images, targets = collate_detection([(a, target), (b, target)])
    assert images.shape == (2, 3, 25, 30) and len(targets) == 2
    assert torch.equal(images[0, :, :20, :30], a) and images[0, :, 20:].abs().sum() == 0
    assert torch.equal(images[1, :, :25, :10], b) and images[1, :, :, 10:].abs().sum() == 0
    assert torch.equal(pad_images([a]), a[None])


def test_synthetic_boxes_are_the_exact_extent_of_each_shape() -> None:
    shapes = SyntheticShapesDetection(20, image_size=64, max_objects=3, seed=3)
    counts = set()
    for i in range(20):
        image, objects = shapes.render(i)
        pixels = np.asarray(image).astype(int)
        background = pixels[0, 0]
        counts.add(len(objects))
        for _, (x1, y1, x2, y2) in objects:
            inside = np.abs(pixels[y1:y2, x1:x2] - background).sum(-1) > 0
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert counts == {1, 2, 3}
