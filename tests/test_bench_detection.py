"""The detection-heads benchmark's plumbing (tiny sizes) and its data: digits pasted onto photographs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_modules import load_benchmark

from transferkit import ExportError

TINY = ["--backbone", "resnet18", "--train", "8", "--val", "4", "--size", "48", "--epochs", "1"]
TINY += ["--time-images", "2", "--threads", "1", "--no-onnx"]


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    yield load_benchmark("bench_detection")
    torch.set_num_threads(threads)  # main() sets the thread count


def test_smoke_run_prints_both_tables(bench, capsys) -> None:
    result = bench.main([*TINY, "--heads", "fcos,yolo"])
    out = capsys.readouterr().out
    assert [row["head"] for row in result["epochs"]] == ["fcos", "yolo"]
    for row in result["epochs"]:
        assert row["images_per_s"] > 0 and row["cpu_ms"] > 0 and 0 <= row["map_50"] <= 1
        assert row["onnx_ms"] == "not run (--no-onnx)" and row["neck"] == "fpn_lite"
    assert {row["head"] for row in result["time"]} == {"fcos", "yolo"}
    assert "| head | neck | params M | train s | train img/s | val mAP | val mAP@0.5 |" in out
    assert "### Equal wall time:" in out and "| fcos | fpn_lite |" in out and "| n/a |" in out


def test_onnx_column_says_why_not(bench, monkeypatch, tmp_path) -> None:
    class Refuses:
        def export(self, path: Path) -> Path:
            raise ExportError(f"cannot export this detection model to {path}")

    images = [torch.zeros(3, 8, 8)]
    assert bench.onnx_ms(Refuses(), images, tmp_path / "m.onnx", 1).startswith("ExportError: cannot export")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert "onnxruntime is not installed" in bench.onnx_ms(Refuses(), images, tmp_path / "m.onnx", 1)
    assert bench._ms("ExportError: ...") == "n/a" and bench._ms(12.345) == "12.3"


def test_equal_time_gives_each_head_the_epochs_that_fit(bench) -> None:
    runs = {"fast": [{"train_seconds": 10.0}, {"train_seconds": 12.0}], "slow": [{"train_seconds": 33.0}]}
    assert bench.equal_time_epochs(runs, 3, 11.0) == {"fast": 3, "slow": 1}
    assert bench.equal_time_epochs(runs, 3, 30.0) == {"fast": 8, "slow": 2}
    args = bench._parse(["--heads", "ssdlite,fcos", "--head-kwargs", '{"fcos": {"score_thresh": 0.1}}'])
    assert [bench.neck_of(args, h) for h in args.heads] == ["identity", "fpn_lite"]
    assert bench.head_kwargs(args, "fcos") == {"score_thresh": 0.1}
    assert bench.head_kwargs(args, "fasterrcnn")["representation_size"] == 256


def test_digit_boxes_are_the_ink_and_the_splits_share_no_digit(bench) -> None:
    scenes = bench.digit_scenes  # the module the benchmark reads, digits loaded once
    train, val = scenes._split_digits("train"), scenes._split_digits("val")
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 5000
    pool = val[scenes._digits()[1][val] == 7][:1]  # one digit 7, pasted alone on a flat grey photo
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    image, target = scenes.render(64, pool, rng, columns=(0.0, 1.0), max_digits=1, photos=(flat,))
    pixels = np.asarray(image).astype(int)
    contrast = np.abs(pixels - 128).max(axis=2)  # the ink's alpha times its distance from the grey
    ink = np.argwhere(contrast > 0.6 * contrast.max())  # alpha above 0.6, so above INK
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert target["labels"].tolist() == [7]
    assert x1 <= ink[:, 1].min() and ink[:, 1].max() < x2 and y1 <= ink[:, 0].min() and ink[:, 0].max() < y2
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    samples = scenes.render_split("val", 3, size=48, seed=0)
    assert all(0 < len(t["labels"]) <= 3 and int(t["labels"].max()) < 10 for _, t in samples)
