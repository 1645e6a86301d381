"""Augmentation control: ``flip`` and ``crop_scale`` in Python (transforms and folder loaders) and on the
command line (``--no-flip``, ``--crop-scale``), saved in transferkit.json and kept by ``--resume``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_runner import run
from PIL import Image
from torchvision.transforms import v2

from transferkit.cli.meta import RunMetaError, check_run_meta
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    build_segmentation_transforms,
    build_transforms,
    image_folder_loaders,
    make_shapes_folder,
    make_shapes_segmentation_folder,
    segmentation_folder_loaders,
)
from transferkit.data.detection import build_detection_transforms


def _left_red_right_blue(side: int = 32) -> Image.Image:
    image = Image.new("RGB", (side, side), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, side // 2, side))
    return image


def _compose(transform) -> v2.Compose:
    """The v2 pipeline of a transform, or of a joint (image + mask or boxes) one."""
    return transform if isinstance(transform, v2.Compose) else transform.transform


def _steps(transform) -> list[type]:
    return [type(t) for t in _compose(transform).transforms]


def test_flip_false_never_flips_and_flip_true_does() -> None:
    image = _left_red_right_blue()
    for flip, expect_some in ((True, True), (False, False)):
        transform = build_transforms(DEFAULT_DATA_CONFIG, True, 32, crop_scale=(1.0, 1.0), flip=flip)
        torch.manual_seed(0)
        red_right = [bool(transform(image)[0, 16, -1] > 0) for _ in range(40)]
        assert any(red_right) is expect_some, (flip, sum(red_right))
        assert (v2.RandomHorizontalFlip in _steps(transform)) is flip


def test_segmentation_and_detection_transforms_take_flip() -> None:
    image, mask = _left_red_right_blue(), Image.new("L", (32, 32))
    joint = build_segmentation_transforms(DEFAULT_DATA_CONFIG, True, 32, crop_scale=(1.0, 1.0), flip=False)
    torch.manual_seed(0)
    assert not any(joint(image, mask)[0][0, 16, -1] > 0 for _ in range(30))
    assert v2.RandomHorizontalFlip not in _steps(joint)
    boxes = build_detection_transforms(DEFAULT_DATA_CONFIG, True, 32, flip=False, scale_range=(1.0, 1.0))
    target = {"boxes": [[0.0, 0.0, 8.0, 32.0]], "labels": [1]}
    torch.manual_seed(0)
    assert all(boxes(image, target)[1]["boxes"].tolist() == [[0.0, 0.0, 8.0, 32.0]] for _ in range(30))
    assert v2.RandomHorizontalFlip not in _steps(boxes)
    assert v2.RandomHorizontalFlip in _steps(build_detection_transforms(DEFAULT_DATA_CONFIG, True, 32))


def _crop_scales(transform) -> list[tuple[float, float]]:
    return [tuple(t.scale) for t in _compose(transform).transforms if isinstance(t, v2.RandomResizedCrop)]


def test_folder_loaders_pass_flip_and_crop_scale(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path / "cls", num_classes=2, per_class={"train": 2}, image_size=32)
    default = image_folder_loaders(root, image_size=32)["train"].dataset.transform
    # the default that hurt least in bench_recipes.py --augment: a mild crop, no flip (digits, text)
    assert _crop_scales(default) == [(0.7, 1.0)] and v2.RandomHorizontalFlip not in _steps(default)
    flipping = image_folder_loaders(root, image_size=32, flip=True)["train"].dataset.transform
    assert v2.RandomHorizontalFlip in _steps(flipping)
    loaders = image_folder_loaders(root, image_size=32, flip=False, crop_scale=(0.6, 0.9))
    transform = loaders["train"].dataset.transform
    assert _crop_scales(transform) == [(0.6, 0.9)] and v2.RandomHorizontalFlip not in _steps(transform)
    seg = make_shapes_segmentation_folder(tmp_path / "seg", per_split={"train": 2})
    transform = segmentation_folder_loaders(seg, image_size=32, flip=False, crop_scale=(0.8, 1.0))[
        "train"
    ].dataset.transform
    assert _crop_scales(transform) == [(0.8, 1.0)] and v2.RandomHorizontalFlip not in _steps(transform)


@pytest.mark.parametrize(
    ("crop_scale", "why"),
    [
        ((0.0, 1.0), "outside (0, 1]"),
        ((0.5, 1.5), "outside (0, 1]"),
        ((0.8, 0.5), "whose min is above its max"),
        ((math.nan, 1.0), "not a pair of numbers"),
        ((0.5,), "got (0.5,)"),
        ("0.5", "got '0.5'"),
    ],
)
def test_a_bad_crop_scale_is_refused_with_the_rule(crop_scale, why: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"crop_scale is \(min, max\).*0 < min <= max <= 1") as err:
        build_transforms(DEFAULT_DATA_CONFIG, True, 32, crop_scale=crop_scale)
    assert why in str(err.value)
    root = make_shapes_folder(tmp_path / "cls", num_classes=2, per_class={"train": 1}, image_size=32)
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        image_folder_loaders(root, image_size=32, crop_scale=crop_scale)


def test_a_flip_that_is_not_a_bool_is_refused(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path / "cls", num_classes=2, per_class={"train": 1}, image_size=32)
    with pytest.raises(TypeError, match="flip must be True or False, got 'no'"):
        image_folder_loaders(root, flip="no")


def _train_argv(data: Path, out: Path, *extra: object) -> list[object]:
    return [
        "train", "--data", data, "--backbone", "resnet18", "--pretrained", "false", "--freeze", "all",
        "--epochs", 1, "--batch-size", 4, "--image-size", 32, "--device", "cpu", "--out", out, *extra,
    ]  # fmt: skip


def test_cli_saves_no_flip_and_crop_scale_and_resume_keeps_them(tmp_path: Path) -> None:
    data = make_shapes_folder(tmp_path / "data", num_classes=2, per_class={"train": 4}, image_size=32)
    out = tmp_path / "run"
    result = run(*_train_argv(data, out, "--no-flip", "--crop-scale", "0.5"))
    assert result.code == 0, result.err
    meta = json.loads((out / "transferkit.json").read_text())
    assert (meta["flip"], meta["crop_scale"]) == (False, [0.5, 1.0])
    # --resume rebuilds the run from these; a different value is a conflict, the same one is not
    from argparse import Namespace

    from transferkit.cli.resume import TRAIN_DEFAULTS, resumed_arguments

    given = Namespace(**dict.fromkeys(TRAIN_DEFAULTS))
    assert resumed_arguments(out, given)["flip"] is False
    assert resumed_arguments(out, given)["crop_scale"] == [0.5, 1.0]
    given.crop_scale = [0.5, 1.0]
    assert resumed_arguments(out, given)["crop_scale"] == [0.5, 1.0]
    again = run("train", "--resume", "--out", out, "--crop-scale", "0.6,0.9")
    assert again.code == 2 and "--crop-scale [0.6, 0.9] (the run has [0.5, 1.0])" in again.err


@pytest.mark.parametrize("text", ["0", "0.5,1.2", "0.9,0.5", "big", "0.2,0.5,1"])
def test_cli_refuses_a_bad_crop_scale_while_parsing(text: str, tmp_path: Path) -> None:
    result = run(*_train_argv(tmp_path / "none", tmp_path / "run", "--crop-scale", text))
    assert result.code == 2 and f"got {text!r}" in result.err and "0 < MIN <= MAX <= 1" in result.err
    assert not (tmp_path / "run").exists()


def test_run_meta_checks_flip_and_crop_scale() -> None:
    assert check_run_meta({"flip": False, "crop_scale": [0.5, 1.0]}, "t.json")["flip"] is False
    assert check_run_meta({"crop_scale": None, "flip": None}, "t.json") == {"crop_scale": None, "flip": None}
    with pytest.raises(
        RunMetaError, match=r"field 'flip' must be true, false, or null \(the task's default\)"
    ):
        check_run_meta({"flip": "no"}, "t.json")
    with pytest.raises(RunMetaError, match=r"field 'crop_scale' must be \[min, max\]"):
        check_run_meta({"crop_scale": [0.9, 0.1]}, "t.json")


def test_cli_crop_scale_for_detection_is_a_usage_error(tmp_path: Path) -> None:
    from transferkit.data import make_shapes_detection_folder

    data = make_shapes_detection_folder(tmp_path / "det", per_split={"train": 2})
    result = run(*_train_argv(data, tmp_path / "run", "--head", "fcos", "--crop-scale", "0.5"))
    assert result.code == 2 and "--crop-scale does not apply to detection" in result.err


def test_cli_flip_turns_flips_on_for_classification_and_refuses_both_flags(tmp_path: Path) -> None:
    import argparse

    from transferkit.cli.train import _folder_loaders, add_parser
    from transferkit.tasks import get_task

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    data = make_shapes_folder(tmp_path / "data", num_classes=2, per_class={"train": 2}, image_size=32)
    task = get_task("classification")
    for extra, flips in (([], False), (["--flip"], True), (["--no-flip"], False)):
        argv = ["train", "--data", str(data), "--image-size", "32", "--batch-size", "2", "--seed", "0"]
        args = parser.parse_args([*argv, *extra])
        transform = _folder_loaders(data, task, None, args)["train"].dataset.transform
        assert (v2.RandomHorizontalFlip in _steps(transform)) is flips, extra
    both = run(*_train_argv(data, tmp_path / "run", "--flip", "--no-flip"))
    assert both.code == 2 and "not allowed with argument" in both.err


def test_every_classification_loader_has_the_same_augmentation_defaults() -> None:
    import inspect

    from transferkit.data import array_loaders, build_transforms, csv_loaders

    for loader in (image_folder_loaders, array_loaders, csv_loaders, build_transforms):
        parameters = inspect.signature(loader).parameters
        assert parameters["flip"].default is False, loader.__name__
        assert parameters["crop_scale"].default == (0.7, 1.0), loader.__name__
