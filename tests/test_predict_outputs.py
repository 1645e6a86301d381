"""What ``transferkit predict`` and ``model.predict`` give back (issue #25.8, #25.11).

A path that is not there is reported and skipped like an unreadable file, the rest are predicted and the
command then exits 1; ``--csv`` writes the answers as a table at full precision, ``--masks-dir`` a
segmentation model's masks as PNGs at each image's own size, and detection answers keep the boxes from
``score_threshold`` (default 0.3), at most ``max_detections``, in Python and on the command line alike.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_runner import run
from PIL import Image

from transferkit import build_model, load_model
from transferkit.tasks.detection import SCORE_THRESHOLD

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 32
CLASSES = ["ant", "bee", "wasp"]


def _saved(folder: Path, **kwargs: Any) -> Path:
    """A saved model at ``SIDE`` px (``transferkit predict`` reads a folder without transferkit.json too)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, classes=CLASSES, pretrained=False, **kwargs)
    model.data_config = {"input_size": (3, SIDE, SIDE)}
    model.save(folder)
    return folder


def _images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("cls")
    return _saved(root / "run"), _images(root / "images", [(40, 30), (32, 32), (24, 48)])


def test_missing_and_unreadable_paths_are_reported_and_the_rest_predicted(
    classifier: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    run_dir, (good, other, _) = classifier
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    (tmp_path / "empty").mkdir()
    code, out, err = run(
        "predict", "--model", run_dir, good, tmp_path / "nope.jpg", broken, tmp_path / "empty", other
    )
    assert code == 1  # something was skipped: a script sees it
    assert [line.split(": ")[0] for line in out.strip().splitlines()] == [str(good), str(other)]
    reported = err.strip().splitlines()
    assert len(reported) == 3
    assert f"skipped {tmp_path / 'nope.jpg'}: no such image file" in err
    assert f"skipped {broken}: cannot read image" in err
    assert f"skipped {tmp_path / 'empty'}: holds no image files" in err


def test_csv_holds_the_top_k_rows_of_each_file_at_full_precision(
    classifier: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    run_dir, files = classifier
    table = tmp_path / "out" / "answers.csv"
    code, out, err = run("predict", "--model", run_dir, *files, "--top-k", "2", "--csv", table)
    assert code == 0, err
    rows = _csv(table)
    assert list(rows[0]) == ["path", "rank", "class", "probability"]
    assert [(row["path"], row["rank"]) for row in rows] == [(str(f), r) for f in files for r in "12"]
    model = load_model(run_dir)
    for path in files:
        python = model.predict(str(path), top_k=2)
        written = [(row["class"], float(row["probability"])) for row in rows if row["path"] == str(path)]
        assert [name for name, _ in written] == [name for name, _ in python]
        for (_, p_csv), (_, p_py) in zip(written, python):
            assert abs(p_csv - p_py) < 1e-6
    assert any(len(row["probability"]) > 8 for row in rows)  # not rounded like the printed lines
    assert f"table written to {table}" in out


def test_masks_dir_writes_each_mask_at_its_images_size_and_csv_gives_pixel_shares(tmp_path: Path) -> None:
    run_dir = _saved(tmp_path / "run", head="fcn", neck="fpn_lite")
    files = _images(tmp_path / "images", [(48, 40), (32, 32)])
    masks, table = tmp_path / "masks", tmp_path / "shares.csv"
    code, out, err = run(
        "predict", "--model", run_dir, *files, "--masks-dir", masks, "--csv", table, "--top-k", "3"
    )
    assert code == 0, err
    model = load_model(run_dir)
    rows = _csv(table)
    assert list(rows[0]) == ["path", "rank", "class", "pixel_share"]
    for path in files:
        written = Image.open(masks / f"{path.stem}.png")
        assert written.mode == "L" and written.size == Image.open(path).size  # the input's own size
        expected = model.predict(str(path))
        assert torch.equal(torch.from_numpy(np.asarray(written).astype(np.int64)), expected)
        shares = torch.bincount(expected.flatten(), minlength=3).double() / expected.numel()
        for row in (row for row in rows if row["path"] == str(path)):
            assert abs(float(row["pixel_share"]) - shares[CLASSES.index(row["class"])].item()) < 1e-9
    (tmp_path / "more").mkdir()
    twin = tmp_path / "more" / files[0].name
    twin.write_bytes(files[0].read_bytes())
    code, _, err = run("predict", "--model", run_dir, files[0], twin, "--masks-dir", tmp_path / "m2")
    assert code == 1 and "would both write their mask" in err and not (tmp_path / "m2").exists()


def test_masks_dir_and_detection_options_are_refused_for_other_tasks(
    classifier: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    run_dir, files = classifier
    code, _, err = run("predict", "--model", run_dir, files[0], "--masks-dir", tmp_path / "m")
    assert code == 1 and "--masks-dir writes segmentation masks; this is a classification model" in err
    code, _, err = run("predict", "--model", run_dir, files[0], "--max-detections", "3")
    assert code == 1 and "max_detections applies to detection models" in err
    with pytest.raises(ValueError, match="score_threshold applies to detection models"):
        load_model(run_dir).predict(str(files[0]), score_threshold=0.5)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    # An untrained FCOS scores about 0.01 everywhere; the head keeps all (score_thresh 0) so there are boxes
    root = tmp_path_factory.mktemp("det")
    run_dir = _saved(root / "run", head="fcos", neck="fpn_lite", head_kwargs={"score_thresh": 0.0})
    return run_dir, _images(root / "images", [(64, 48), (32, 32)])


def test_model_predict_keeps_boxes_from_the_score_threshold_up_to_max_detections(
    detector: tuple[Path, list[Path]],
) -> None:
    run_dir, files = detector
    model = load_model(run_dir)
    every = model.predict(str(files[0]), score_threshold=0.0)
    assert 7 < len(every["scores"]) <= 100
    assert len(model.predict(str(files[0]))["scores"]) == (every["scores"] >= SCORE_THRESHOLD).sum() == 0
    seven = model.predict(str(files[0]), score_threshold=0.0, max_detections=7)
    assert torch.equal(seven["scores"], every["scores"][:7])  # the best seven, best first
    middle = float(every["scores"].median())
    kept = model.predict(str(files[0]), score_threshold=middle)["scores"]
    assert len(kept) == (every["scores"] >= middle).sum() and (kept >= middle).all()
    for bad in ({"score_threshold": 1.5}, {"max_detections": 0}, {"max_detections": True}):
        with pytest.raises(ValueError, match="score_threshold is a score in|max_detections is an int"):
            model.predict(str(files[0]), **bad)


def test_cli_detection_options_limit_printed_and_written_boxes(
    detector: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    run_dir, files = detector
    table = tmp_path / "boxes.csv"
    code, out, err = run(
        "predict", "--model", run_dir, *files, "--score-threshold", "0", "--max-detections", "3",
        "--csv", table, "--draw", tmp_path / "drawn.png",
    )  # fmt: skip
    assert code == 0, err
    lines = out.strip().splitlines()[: len(files)]
    assert all(line.count("[") == 3 for line in lines)
    rows = _csv(table)
    assert list(rows[0]) == ["path", "rank", "class", "score", "x1", "y1", "x2", "y2"]
    assert [row["rank"] for row in rows] == ["1", "2", "3"] * len(files)
    python = load_model(run_dir).predict(str(files[0]), score_threshold=0.0, max_detections=3)
    first = [row for row in rows if row["path"] == str(files[0])]
    boxes = torch.tensor([[float(row[k]) for k in ("x1", "y1", "x2", "y2")] for row in first])
    assert torch.allclose(boxes, python["boxes"], atol=1e-3)
    assert all(float(box[2]) <= 64 and float(box[3]) <= 48 for box in boxes)  # the image's own pixels
    code, out, _ = run("predict", "--model", run_dir, files[0], "--csv", table)  # defaults: 0.3, none
    assert code == 0 and "no box scoring 0.3 or more" in out
    assert _csv(table) == [{"path": str(files[0]), **dict.fromkeys(rows[0].keys() - {"path"}, "")}]
    code, _, err = run("predict", "--model", run_dir, files[0], "--score-threshold", "2")
    assert code == 2 and "expected a score in [0, 1]" in err
