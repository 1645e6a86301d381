"""``transferkit demo --task detection --head H``: another detection head trains and leaves the same
files; a head of another task is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run

from transferkit import load_model
from transferkit.cli.demo import demo_head

PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_detection_trains_the_yolo_head(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = run("demo", "--task", "detection", "--head", "yolo", "--quick", "--out", out)
    assert code == 0, stderr
    assert "train yolo on boxes" in stdout and "+ yolo head (transferkit's anchor-free YOLO head" in stdout
    assert "transferkit train --head yolo" in stdout
    for step in range(1, 6):
        assert f"[{step}/5]" in stdout
    for picture in ("predicted_boxes.png", "predictions.png", "history.png"):
        assert (out / picture).read_bytes().startswith(PNG), picture
    model = load_model(out)
    assert model.task == "detection" and model.config["head"] == "yolo"
    history = json.loads((out / "history.json").read_text())
    assert "val_map_50" in history[0] and sum(k.startswith("train_loss_") for k in history[0]) >= 3


@pytest.mark.parametrize(
    ("task", "head", "says"),
    [
        ("detection", "linear", "--head linear is a classification head, not a detection one: the detection "
         "demo trains yolo (default), fasterrcnn, fcos, retinanet or ssdlite"),
        ("detection", "fcn", "--head fcn is a segmentation head"),
        ("classification", "yolo", "--head yolo is a detection head, not a classification one: pass --task "
         "detection to train yolo"),
        ("detection", "yoloo", "Did you mean: yolo?"),
    ],
)  # fmt: skip
def test_demo_refuses_a_head_of_another_task_before_writing(
    tmp_path: Path, task: str, head: str, says: str
) -> None:
    out = tmp_path / "demo"
    code, stdout, stderr = run("demo", "--task", task, "--head", head, "--quick", "--out", out)
    assert code == 2 and stdout == ""
    assert stderr.startswith("transferkit demo: error: ") and says in stderr, stderr
    assert not out.exists()


def test_demo_head_defaults_to_the_task_default() -> None:
    assert demo_head("detection", None) == "yolo" and demo_head("classification", None) == "linear"
    assert demo_head("classification", "linear") == "linear"
