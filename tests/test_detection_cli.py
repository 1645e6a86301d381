"""The command line with a detector: train --head fcos on a COCO folder (the task and the neck from the
head), eval prints COCO mAP on COCO and VOC folders, predict prints boxes and draws them, and the
detection demo runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_runner import run
from PIL import Image

from transferkit import load_model
from transferkit.data import make_shapes_detection_folder

PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("boxes")
    data = make_shapes_detection_folder(root / "coco", per_split={"train": 4, "val": 2}, seed=0)
    out = root / "run"
    code, stdout, stderr = run(
        "train", "--head", "fcos", "--data", data, "--backbone", "resnet18", "--pretrained", "false",
        "--epochs", 1, "--batch-size", 2, "--image-size", 64, "--out", out,
    )  # fmt: skip
    assert code == 0, stderr
    return data, out, stdout


def test_train_takes_the_task_and_neck_from_the_head(trained: tuple[Path, Path, str]) -> None:
    _, out, stdout = trained
    assert "resnet18 + fpn_lite neck + fcos head (detection)" in stdout
    assert "val_map_50" in stdout and "(highest val_map)" in stdout
    meta = json.loads((out / "transferkit.json").read_text())
    assert meta["task"] == "detection" and meta["neck"] == "fpn_lite"
    assert meta["classes"] == ["circle", "square", "triangle"]
    history = json.loads((out / "history.json").read_text())
    assert {"train_loss_classification", "train_loss_bbox_regression", "val_map"} <= set(history[0])
    assert (out / "predictions.png").read_bytes().startswith(PNG)
    assert load_model(out).task == "detection"


@pytest.mark.parametrize("format", ["coco", "voc"])
def test_eval_prints_coco_map_on_either_format(
    trained: tuple[Path, Path, str], format: str, tmp_path
) -> None:
    data, out, _ = trained
    if format == "voc":  # the same images, written the other way
        data = make_shapes_detection_folder(tmp_path, per_split={"train": 4, "val": 2}, seed=0, format="voc")
    code, stdout, stderr = run("eval", "--model", out, "--data", data)
    assert code == 0, stderr
    assert f"{data / 'val'}: 2 images, 3 classes" in stdout
    values = {k: float(v) for k, v in re.findall(r"^(mAP@\S+)\s+([\d.]+)$", stdout, re.M)}
    assert set(values) == {"mAP@[.5:.95]", "mAP@0.5"} and all(0 <= v <= 1 for v in values.values())
    assert "loss" not in stdout
    assert re.search(r"^class\s+AP\s+AP@0.5\s+boxes$", stdout, re.M)  # per-class table (interpret)
    rows = re.findall(r"^(circle|square|triangle)\s+([\d.]+|-)\s+([\d.]+|-)\s+(\d+)$", stdout, re.M)
    assert [name for name, *_ in rows] == ["circle", "square", "triangle"], stdout


def test_predict_prints_boxes_in_image_pixels_and_draws_them(
    trained: tuple[Path, Path, str], tmp_path
) -> None:
    data, out, _ = trained
    big = tmp_path / "big.png"
    Image.open(sorted((data / "val" / "images").iterdir())[0]).resize((128, 96)).save(big)
    picture = tmp_path / "drawn.png"
    code, stdout, stderr = run("predict", "--model", out, big, data / "val" / "images", "--draw", picture)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == f"boxes drawn in {picture}"
    for line in lines[:3]:
        path, _, boxes = line.partition(": ")
        assert Path(path).is_file()
        width, height = (128, 96) if path == str(big) else (64, 64)
        for x1, y1, x2, y2 in re.findall(r"\[(\d+), (\d+), (\d+), (\d+)\]", boxes):
            assert 0 <= int(x1) <= int(x2) <= width and 0 <= int(y1) <= int(y2) <= height
        assert re.fullmatch(r"(\w+ \d\.\d{3} \[[\d, ]+\](; )?)+|no box scoring 0\.3 or more", boxes), boxes
    assert picture.read_bytes().startswith(PNG)
    code, stdout, _ = run("predict", "--model", out, big)
    assert code == 0 and (out / "predicted_boxes.png").is_file()  # the default place


def test_demo_detection_quick(tmp_path: Path) -> None:
    code, stdout, stderr = run("demo", "--task", "detection", "--quick", "--out", tmp_path / "demo")
    assert code == 0, stderr
    for step in range(1, 6):
        assert f"[{step}/5]" in stdout
    assert "mAP@0.5" in stdout and (tmp_path / "demo" / "predicted_boxes.png").read_bytes().startswith(PNG)
    assert load_model(tmp_path / "demo").task == "detection"
