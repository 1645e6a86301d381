"""The CLI's export command, Hub models in place of run folders, augmentation flags and run logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from transferkit import cli, load_model
from transferkit.data import make_shapes_folder
from transferkit.training.callbacks import read_history_csv

COMMIT = "1" * 40


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = make_shapes_folder(root / "data", num_classes=2, per_class={"train": 4, "val": 2}, image_size=32)
    argv = ["train", "--data", str(data), "--backbone", "resnet18", "--pretrained", "false", "--epochs", "2"]
    argv += ["--image-size", "32", "--out", str(root / "run"), "--augment", "trivialaugment+randomerasing"]
    argv += ["--mixup", "0.2", "--label-smoothing", "0.1", "--log", "tensorboard"]
    assert cli.main(argv) == 0
    return root / "run"


def test_a_run_folder_logs_csv_tensorboard_and_class_plots(run: Path) -> None:
    history = json.loads((run / "history.json").read_text())
    rows = read_history_csv(run / "history.csv")
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in history] == [0, 1]
    assert rows[-1]["val_loss"] == pytest.approx(history[-1]["val_loss"])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "confusion.png").stat().st_size > 0
    meta = json.loads((run / "transferkit.json").read_text())
    assert (meta["augment"], meta["mixup"], meta["label_smoothing"], meta["log"]) == (
        "trivialaugment+randomerasing",
        0.2,
        0.1,
        "tensorboard",
    )


def test_export_command_writes_a_program_that_matches_the_model(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.pt2"
    assert cli.main(["export", "--model", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out  # the preprocessing, exactly: resize 32 / 0.875 = 36, crop 32
    assert "resize the shorter side to 36 px (bilinear, antialiased), crop the centre 32x32" in printed
    assert "-> x float32 [N, 3, 32, 32]" in printed
    model = load_model(run).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(out).module()(x), model(x))
    assert cli.main(["export", "--model", str(run), "--out", str(tmp_path / "m.tflite")]) == 1
    assert "unknown suffix '.tflite'" in capsys.readouterr().err


def test_predict_takes_a_hub_model(run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = tmp_path / "hub" / "models--me--shapes" / "snapshots" / COMMIT
    shutil.copytree(run, snapshot, ignore=shutil.ignore_patterns("tb", "*.png", "checkpoint"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    image = next((run.parent / "data" / "val" / "circle").iterdir())
    assert cli.main(["predict", "--model", "hf-hub:me/shapes", str(image)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(str(image)) and ("circle" in line and "square" in line)
