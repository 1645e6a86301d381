"""A folder's layout decides its task: loaders and ``transferkit train`` refuse another task's folder, a
one-class classifier, and a model with more outputs than the data has classes."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
from cli_runner import Result, run

import transferkit.data.kinds
from transferkit import build_model
from transferkit.data import (
    FolderKind,
    detection_folder_loaders,
    folder_kinds,
    image_folder_loaders,
    make_shapes_detection_folder,
    make_shapes_folder,
    make_shapes_segmentation_folder,
    segmentation_folder_loaders,
)
from transferkit.training import Trainer

SIZE = 32


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny folder of each layout: classes (2), segmentation (masks), COCO and VOC detection."""
    tmp = tmp_path_factory.mktemp("kinds")
    return {
        "classes": make_shapes_folder(tmp / "cls", num_classes=2, per_class={"train": 2}, image_size=SIZE),
        "masks": make_shapes_segmentation_folder(tmp / "seg", per_split={"train": 2}, image_size=SIZE),
        "coco": make_shapes_detection_folder(tmp / "coco", per_split={"train": 2}, image_size=SIZE),
        "voc": make_shapes_detection_folder(
            tmp / "voc", per_split={"train": 2}, image_size=SIZE, format="voc"
        ),
    }


def _one_line_error(result: Result, code: int) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]


def test_doctests_hold() -> None:
    result = doctest.testmod(transferkit.data.kinds)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------ recognising
def test_folder_kinds_tell_the_layouts_apart(folders: dict[str, Path], tmp_path: Path) -> None:
    assert folder_kinds(folders["classes"]) == [
        FolderKind("classification", "class folders under train/: circle, square")
    ]
    assert [k.task for k in folder_kinds(folders["masks"])] == ["segmentation"]
    assert folder_kinds(folders["coco"])[0].evidence == "train/images and train/annotations.json, COCO"
    assert folder_kinds(folders["voc"])[0].evidence == "train/images and train/annotations/, Pascal VOC"
    assert folder_kinds(tmp_path / "missing") == []
    broken = tmp_path / "broken" / "train" / "images"  # masks forgotten: the loaders say what is missing
    broken.mkdir(parents=True)
    assert folder_kinds(tmp_path / "broken") == []


# --------------------------------------------------------------------------------------- Python loaders
@pytest.mark.parametrize(
    ("folder", "needle"),
    [
        ("masks", r"segmentation folder \(train/images and train/masks\).*segmentation_folder_loaders"),
        (
            "coco",
            r"detection folder \(train/images and train/annotations.json, COCO\).*detection_folder_loaders",
        ),
        ("voc", r"detection folder .*Pascal VOC\).*detection_folder_loaders"),
    ],
)
def test_image_folder_loaders_refuse_a_mask_or_box_folder(folders, folder: str, needle: str) -> None:
    # before: "images" and "masks" became two classes; a COCO folder one class "images" with val_acc 1.0
    with pytest.raises(ValueError, match=needle):
        image_folder_loaders(folders[folder], batch_size=2, image_size=SIZE)


def test_segmentation_and_detection_loaders_refuse_the_other_layouts(folders) -> None:
    with pytest.raises(ValueError, match=r"looks like a classification folder .*image_folder_loaders"):
        segmentation_folder_loaders(folders["classes"], image_size=SIZE)
    with pytest.raises(ValueError, match=r"looks like a segmentation folder.*segmentation_folder_loaders"):
        detection_folder_loaders(folders["masks"], image_size=SIZE)


def test_a_one_class_folder_is_refused_naming_the_class(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path, num_classes=1, per_class={"train": 2}, image_size=SIZE)
    with pytest.raises(
        ValueError, match=r"holds one class folder, 'circle', .*at least 2 classes: add a folder"
    ):
        image_folder_loaders(root, batch_size=2, image_size=SIZE)


# ------------------------------------------------------------------------------------------- the command
def _train(data: Path, out: Path, *extra: object) -> Result:
    return run(
        "train", "--data", data, "--backbone", "resnet18", "--pretrained", "false", "--epochs", 1,
        "--batch-size", 2, "--image-size", SIZE, "--freeze", "all", "--out", out, *extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("folder", "head", "needle"),
    [
        ("masks", "linear", "segmentation folder (train/images and train/masks), which --head linear "
         "(classification) does not read: pass --head fcn (or deeplabv3plus) for segmentation"),
        ("coco", "linear", "pass --head yolo (or fasterrcnn, fcos, retinanet, ssdlite) for detection"),
        ("coco", "fcn", "which --head fcn (segmentation) does not read: pass --head yolo"),
        ("classes", "fcos", "looks like a classification folder (class folders under train/: circle, "
         "square), which --head fcos (detection) does not read: pass --head linear for classification"),
    ],
)  # fmt: skip
def test_train_refuses_a_head_that_misreads_the_folder(folders, tmp_path: Path, folder, head, needle) -> None:
    out = tmp_path / "run"
    line = _one_line_error(_train(folders[folder], out, "--head", head), code=2)
    assert needle in line, line
    assert not out.exists()  # refused before --out was touched


def test_train_without_head_on_a_mask_folder_trains_the_segmentation_head(folders, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(folders["masks"], out)
    assert result.code == 0, result.err
    assert (
        "--data looks like a segmentation folder (train/images and train/masks): training the fcn head"
        in result.out
    )
    meta = json.loads((out / "transferkit.json").read_text())
    assert (meta["task"], meta["head"]) == ("segmentation", "fcn")
    assert meta["classes"] == ["background", "circle", "square", "triangle"]


def test_train_refuses_a_one_class_folder(tmp_path: Path) -> None:
    data = make_shapes_folder(tmp_path / "data", num_classes=1, per_class={"train": 2}, image_size=SIZE)
    line = _one_line_error(_train(data, tmp_path / "run"), code=1)
    assert "holds one class folder, 'circle', and a classifier needs at least 2 classes" in line
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------- num_classes vs the data
def test_more_outputs_than_classes_is_refused_before_training(folders) -> None:
    # before: trained, and the model ended with classes ['0', '1', '2'] instead of the folder's names
    loaders = image_folder_loaders(folders["classes"], batch_size=2, image_size=SIZE, augment=False)
    model = build_model("resnet18", num_classes=3, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"training data has 2 class\(es\) \('circle', 'square'\) but the model has num_classes=3 "
        r"outputs; build the model with num_classes=2",
    ):
        Trainer(model, epochs=1, progress=False).fit(loaders)
    assert model.config.get("classes") is None and model.config.get("data_config") is None
    assert all(v.equal(model.state_dict()[k]) for k, v in before.items())


def test_more_segmentation_outputs_than_classes_is_refused(folders) -> None:
    loaders = segmentation_folder_loaders(folders["masks"], batch_size=2, image_size=SIZE, augment=False)
    model = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=6, pretrained=False)
    with pytest.raises(
        ValueError, match=r"has 4 class\(es\) .*'background'.*build the model with num_classes=4"
    ):
        Trainer(model, epochs=1, progress=False).fit(loaders)
