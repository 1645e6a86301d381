"""Damaged image files are named up front, all of them, and a worker's error reads as one line (issue #25.7).

The folder loaders check every file's header and last bytes when they are built (`transferkit.data.check`),
so a truncated JPEG stops the run before training with one message listing every bad file, instead of a
worker traceback when the epoch reaches it. An error raised inside a DataLoader worker reaches the user as
the original exception type with the original one-line message (`transferkit.training.worker_errors`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run
from PIL import Image
from torch.utils.data import DataLoader

from transferkit import Trainer, build_model
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    ClassFolder,
    build_transforms,
    detection_folder_loaders,
    image_folder_loaders,
    make_shapes_detection_folder,
    make_shapes_folder,
    make_shapes_segmentation_folder,
    segmentation_folder_loaders,
)
from transferkit.data.check import check_image_files, image_file_problem


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_image_folder_loaders_name_every_unreadable_file_on_one_line(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path, num_classes=2, per_class={"train": 8, "val": 4}, image_size=32)
    files = sorted(root.rglob("*.jpg"))
    bad = [_truncate(path) for path in files[:10]]
    (root / "val" / "circle" / "empty.jpg").write_bytes(b"")
    (root / "val" / "square" / "notes.jpg").write_text("not an image")
    with pytest.raises(OSError) as caught:
        image_folder_loaders(root, data_config=DEFAULT_DATA_CONFIG, image_size=32, num_workers=0)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 2000
    assert message.startswith(f"12 of {len(files) + 2} image files under {root} cannot be read: ")
    named = [path for path in bad if path.relative_to(root).as_posix() in message]
    assert len(named) == 10 and "truncated: no JPEG end-of-image marker" in message
    assert "and 2 more" in message and "Remove these files" in message


def test_segmentation_and_detection_loaders_check_images_and_masks(tmp_path: Path) -> None:
    seg = make_shapes_segmentation_folder(tmp_path / "seg", per_split={"train": 3, "val": 2}, image_size=32)
    mask = _truncate(sorted((seg / "val" / "masks").iterdir())[0])
    image = _truncate(sorted((seg / "train" / "images").iterdir())[1])
    with pytest.raises(OSError, match="2 of 10 image files") as caught:
        segmentation_folder_loaders(seg, image_size=32, num_workers=0)
    assert "val/masks/" + mask.name in str(caught.value) and "train/images/" + image.name in str(caught.value)
    assert "no PNG IEND chunk" in str(caught.value)
    det = make_shapes_detection_folder(tmp_path / "det", per_split={"train": 3, "val": 2}, image_size=32)
    broken = _truncate(sorted((det / "val" / "images").iterdir())[0])
    with pytest.raises(OSError, match=f"1 of 5 image files .*{broken.name}"):
        detection_folder_loaders(det, image_size=32)


def test_files_whose_end_looks_odd_but_decode_are_accepted(tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    image.save(tmp_path / "photo.jpg")
    with open(tmp_path / "photo.jpg", "ab") as f:
        f.write(b"\x00" * 16 + b"appended data, as motion photos carry")
    image.save(tmp_path / "plain.png")
    png = (tmp_path / "plain.png").read_bytes()
    (tmp_path / "no_iend.png").write_bytes(png[:-12])  # PIL decodes it whole: training would too
    for name in ("photo.jpg", "plain.png", "no_iend.png"):
        assert image_file_problem(tmp_path / name) is None, name
    Image.open(tmp_path / "no_iend.png").load()


def test_a_thousand_small_files_are_checked_in_well_under_a_second(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    files = [tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}" for i in range(1000)]
    for path in files:
        Image.fromarray(pixels).save(path)
    started = time.perf_counter()
    check_image_files(files)
    assert time.perf_counter() - started < 1.0  # about 0.04 s on one core


def _run_broken_through_a_worker(tmp_path: Path, step: str) -> str:
    root = make_shapes_folder(tmp_path, num_classes=2, per_class={"train": 4}, image_size=32)
    broken = _truncate(sorted(root.rglob("*.jpg"))[2])
    # A folder dataset built by hand skips the loaders' up-front check: the worker meets the file.
    dataset = ClassFolder(root / "train", build_transforms(DEFAULT_DATA_CONFIG, False, 32))
    loader = DataLoader(dataset, batch_size=2, num_workers=1)
    trainer = Trainer(build_model("resnet18", num_classes=2, pretrained=False), epochs=1, progress=False)
    with pytest.raises(OSError) as caught:
        trainer.fit({"train": loader}) if step == "fit" else trainer.evaluate(loader)
    assert type(caught.value) is OSError
    assert str(broken) in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("step", ["fit", "evaluate"])
def test_an_error_in_a_dataloader_worker_is_raised_as_its_own_one_line_message(
    tmp_path: Path, step: str
) -> None:
    message = _run_broken_through_a_worker(tmp_path, step)
    assert message.startswith("cannot read image file ") and "\n" not in message
    assert "DataLoader worker" not in message and "Traceback" not in message
    assert message.endswith("Replace or delete the file.")


def test_cli_train_and_eval_stop_before_any_work_naming_the_damaged_file(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path / "data", num_classes=2, per_class={"train": 3}, image_size=32)
    broken = _truncate(sorted(root.rglob("*.jpg"))[0])
    code, out, err = run(
        "train", "--data", root, "--backbone", "resnet18", "--pretrained", "false", "--epochs", "1",
        "--image-size", "32", "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 1
    assert err.count("\n") == 1 and broken.name in err and "1 of 6 image files" in err
    assert "epoch" not in out.lower()
    model = build_model("resnet18", num_classes=2, classes=["circle", "square"], pretrained=False)
    model.save(tmp_path / "model")
    code, out, err = run("eval", "--model", tmp_path / "model", "--data", root, "--split", "train")
    assert code == 1 and err.count("\n") == 1 and f"1 of 6 image files under {root / 'train'}" in err
