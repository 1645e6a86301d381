"""The transferkit command: train/eval/predict/list/demo on generated image folders, and its errors."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_runner import Result, run
from PIL import Image

from transferkit import cli, list_heads, load_model
from transferkit.cli import main, parse_freeze, parse_pretrained
from transferkit.data import make_shapes_folder, make_shapes_segmentation_folder
from transferkit.tasks import get_task

PNG = b"\x89PNG\r\n\x1a\n"


def assert_one_line_error(result: Result, code: int = 1) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err + result.out
    assert lines[0].startswith("transferkit")
    return lines[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ants/bees-style folder of JPEGs: train/{circle,square}/*.jpg (4 each), val/ (3 each), 32 px."""
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_folder(root, num_classes=2, per_class={"train": 4, "val": 3}, image_size=32)


@pytest.fixture(scope="module")
def trained(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One 2-epoch run with gradual unfreezing (1 block, then 3), shared by the eval and predict tests."""
    out = tmp_path_factory.mktemp("run") / "ab"
    result = run(
        "train", "--data", shapes, "--backbone", "resnet18", "--pretrained", "false",
        "--freeze", "gradual:1:2:1", "--epochs", 2, "--batch-size", 4, "--image-size", 32, "--out", out,
    )  # fmt: skip
    return out, result


# ------------------------------------------------------------------------------------------- train


def test_train_saves_model_metadata_history_and_plots(trained: tuple[Path, Result]) -> None:
    out, result = trained
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert "epoch 2/2" in result.err  # the progress bar
    assert "norm mode" in result.out and "layer4.1" in result.out  # the freeze summary
    assert "1 of 9 backbone blocks train" in result.out
    assert f"saved to {out}/" in result.out
    for name in ("config.json", "model.safetensors", "transferkit.json", "history.json"):
        assert (out / name).is_file(), name
    for name in ("history.png", "predictions.png"):
        assert (out / name).read_bytes().startswith(PNG), name
    meta = json.loads((out / "transferkit.json").read_text())
    assert meta["task"] == "classification"
    assert meta["classes"] == ["circle", "square"]
    assert meta["image_size"] == 32 and meta["freeze"] == "gradual:1:2:1"
    history = json.loads((out / "history.json").read_text())
    assert [row["trainable_blocks"] for row in history] == [1, 3]
    assert all({"train_loss", "val_loss", "val_acc"} <= set(row) for row in history)
    model = load_model(out)
    assert model.num_classes == 2 and model.freeze_state()["policy"] == "gradual"


def test_train_without_val_split_or_matplotlib(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes / "train", data / "train")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if a broken install lacked matplotlib
    out = tmp_path / "run"
    out.mkdir()
    earlier = '{"status": "done", "transferkit_version": "0"}'
    (out / "transferkit.json").write_text(earlier)  # an earlier run into the same folder ...
    (out / "history.png").write_bytes(PNG)  # ... whose plots must not pass for this one's
    result = run(
        "train", "--data", data, "--backbone", "resnet18", "--pretrained", "false", "--freeze", "all",
        "--epochs", 1, "--batch-size", 8, "--image-size", 32, "--out", out, "--overwrite",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "no val split" in result.out
    notes = [line for line in result.out.splitlines() if "matplotlib" in line]
    assert len(notes) == 1 and "pip install matplotlib" in notes[0]
    assert (out / "model.safetensors").is_file() and not (out / "history.png").exists()
    assert "val_loss" not in json.loads((out / "history.json").read_text())[0]


def test_train_segmentation_then_eval_and_predict(tmp_path: Path) -> None:
    data = make_shapes_segmentation_folder(
        tmp_path / "seg", num_classes=2, per_split={"train": 4, "val": 2}, image_size=32
    )
    out = tmp_path / "run"
    result = run(
        "train", "--data", data, "--backbone", "resnet18", "--neck", "fpn_lite", "--head", "fcn",
        "--pretrained", "false", "--freeze", "all", "--epochs", 1, "--batch-size", 4, "--image-size", 32,
        "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    meta = json.loads((out / "transferkit.json").read_text())
    assert meta["task"] == "segmentation" and meta["classes"] == ["background", "circle", "square"]
    assert "val_miou" in json.loads((out / "history.json").read_text())[0]
    assert (out / "predictions.png").read_bytes().startswith(PNG)

    evaluated = run("eval", "--model", out, "--data", data)
    assert evaluated.code == 0, evaluated.err
    assert "2 images, 3 classes" in evaluated.out
    miou = float(re.search(r"^mIoU\s+([\d.]+)$", evaluated.out, re.M).group(1))
    assert 0.0 <= miou <= 1.0 and "pixel accuracy" in evaluated.out
    assert "precision" not in evaluated.out  # the per-class table is classification's
    ious = re.findall(r"^(background|circle|square)\s+([\d.]+|absent)$", evaluated.out, re.M)
    assert [name for name, _ in ious] == ["background", "circle", "square"], evaluated.out  # IoU per class
    refused = run("eval", "--model", out, "--data", data, "--errors", tmp_path / "e.csv")
    assert "classification models only" in assert_one_line_error(refused)
    assert not (tmp_path / "e.csv").exists()

    predicted = run("predict", "--model", out, data / "val" / "images")
    assert predicted.code == 0, predicted.err
    lines = predicted.out.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("of pixels") for line in lines)
    shares = [float(v) for v in re.findall(r" (\d\.\d{3})", lines[0])]
    assert len(shares) == 3 and sum(shares) == pytest.approx(1.0, abs=2e-3)  # every class listed: all pixels


def test_segmentation_classes_without_classes_txt_come_from_the_masks(tmp_path: Path) -> None:
    data = make_shapes_segmentation_folder(tmp_path, num_classes=3, per_split={"train": 6}, image_size=32)
    (data / "classes.txt").unlink()
    args = argparse.Namespace(batch_size=2, image_size=32, seed=0)
    largest = max(int(np.asarray(Image.open(m)).max()) for m in (data / "train" / "masks").iterdir())
    classes = cli.train._data_classes(data, get_task("segmentation"), args)
    assert classes == [str(i) for i in range(largest + 1)]


# --------------------------------------------------------------------------------- eval and predict


def _predicted(line: str) -> tuple[Path, list[tuple[str, float]]]:
    path, _, ranked = line.partition(": ")
    pairs = re.findall(r"(\w+) (\d\.\d{3})", ranked)
    return Path(path), [(name, float(p)) for name, p in pairs]


def test_eval_accuracy_agrees_with_predict(trained: tuple[Path, Result], shapes: Path) -> None:
    out, _ = trained
    evaluated = run("eval", "--model", out, "--data", shapes)
    assert evaluated.code == 0, evaluated.err
    assert f"{shapes / 'val'}: 6 images, 2 classes" in evaluated.out
    loss = float(re.search(r"^loss\s+([\d.]+)$", evaluated.out, re.M).group(1))
    accuracy = float(re.search(r"^accuracy\s+([\d.]+)$", evaluated.out, re.M).group(1))
    assert loss > 0 and 0 <= accuracy <= 1

    predicted = run("predict", "--model", out, shapes / "val")
    assert predicted.code == 0, predicted.err
    lines = predicted.out.strip().splitlines()
    assert len(lines) == 6
    right = 0
    for line in lines:
        path, ranked = _predicted(line)
        assert path.is_file()
        assert [name for name, _ in ranked] in (["circle", "square"], ["square", "circle"])
        probs = [p for _, p in ranked]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=2e-3)
        right += ranked[0][0] == path.parent.name
    # eval and predict share the model's eval transforms and class order, so they must agree exactly
    assert accuracy == pytest.approx(right / 6, abs=1e-4)


def test_eval_prints_per_class_scores_and_writes_the_errors_csv(
    trained: tuple[Path, Result], shapes: Path, tmp_path: Path
) -> None:
    out, _ = trained
    errors_csv = tmp_path / "errors.csv"
    evaluated = run("eval", "--model", out, "--data", shapes, "--split", "train", "--errors", errors_csv)
    assert evaluated.code == 0, evaluated.err
    assert re.search(r"^class\s+precision\s+recall\s+F1\s+support$", evaluated.out, re.M)
    rows = re.findall(r"^(circle|square)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)$", evaluated.out, re.M)
    assert rows == [("circle", "4"), ("square", "4")]

    predicted = run("predict", "--model", out, shapes / "train")
    wrong = {}
    for line in predicted.out.strip().splitlines():
        path, ranked = _predicted(line)
        if ranked[0][0] != path.parent.name:
            wrong[path.resolve()] = (path.parent.name, *ranked[0])
    with errors_csv.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert wrong, "the run should misclassify some training images, or this compares empty sets"
    assert f"{len(wrong)} misclassified images written to {errors_csv}" in evaluated.out
    found = {Path(r["path"]).resolve(): (r["true"], r["predicted"], float(r["probability"])) for r in rows}
    assert found.keys() == wrong.keys()
    for path, (true, name, probability) in wrong.items():
        assert found[path][:2] == (true, name) and found[path][2] == pytest.approx(probability, abs=1e-3)


def test_eval_takes_a_split_folder_or_split_name(trained: tuple[Path, Result], shapes: Path) -> None:
    out, _ = trained
    direct = run("eval", "--model", out, "--data", shapes / "val")
    assert direct.code == 0 and "6 images" in direct.out
    train = run("eval", "--model", out, "--data", shapes, "--split", "train")
    assert train.code == 0 and "8 images" in train.out


def test_predict_top_k_and_single_file(trained: tuple[Path, Result], shapes: Path) -> None:
    out, _ = trained
    image = sorted((shapes / "val" / "square").iterdir())[0]
    result = run("predict", "--model", out, image, "--top-k", 1)
    assert result.code == 0, result.err
    path, ranked = _predicted(result.out.strip())
    assert path == image and len(ranked) == 1 and ranked[0][0] in ("circle", "square")


# -------------------------------------------------------------------------------------------- list


def test_list_names_with_patterns() -> None:
    assert run("list", "necks").out.split() == ["aspp", "fpn_lite", "identity", "pan", "simple_pyramid"]
    heads = ["deeplabv3plus", "fasterrcnn", "fcn", "fcos", "linear", "retinanet", "ssdlite", "yolo"]
    assert run("list", "heads").out.split() == heads
    found = run("list", "backbones", "resnet1").out.split()
    assert "torchvision/resnet18" in found and all("resnet1" in name for name in found)
    assert run("list", "backbones", "torchvision/resnet1?").out.split() == ["torchvision/resnet18"]
    line = assert_one_line_error(run("list", "backbones", "no_such_net"))
    assert "no backbones match 'no_such_net'" in line


def test_list_weights_of_a_backbone_marks_the_default() -> None:
    assert run("list", "weights", "resnet50").out.splitlines() == [
        "IMAGENET1K_V1",
        "IMAGENET1K_V2  (default: --pretrained true)",
    ]
    timm_tags = run("list", "weights", "timm/resnet50").out.splitlines()
    assert timm_tags[0].split() == ["a1_in1k", "(default:", "--pretrained", "true)"]
    assert "a2_in1k" in timm_tags
    assert "needs a backbone name" in assert_one_line_error(run("list", "weights"))
    assert "resnet18" in assert_one_line_error(run("list", "weights", "resnet181"))


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["train", "--data", "{tmp}/missing", "--backbone", "resnet18"], 1, "no such folder"),
        (["train", "--data", "{shapes}/train", "--backbone", "resnet18"], 1, "expected the folder"),
        (["train", "--data", "{shapes}", "--backbone", "resnet181", "--pretrained", "false"], 1, "resnet18"),
        (["train", "--data", "{shapes}", "--backbone", "resnet18", "--freeze", "last_n"], 2, "last_n:K"),
        (["train", "--data", "{shapes}", "--backbone", "resnet18", "--freeze", "thaw"], 2, "unknown freeze"),
        (
            [
                "train",
                "--data",
                "{shapes}",
                "--backbone",
                "resnet18",
                "--pretrained",
                "false",
                "--freeze",
                "last_n:99",
            ],
            1,
            "n=99 is out of range",
        ),  # fmt: skip
        (
            ["train", "--data", "{shapes}", "--backbone", "resnet18", "--pretrained", "{tmp}/w.pth"],
            2,
            "w.pth",
        ),
        (["train", "--data", "{shapes}", "--backbone", "resnet18", "--epochs", "0"], 2, "--epochs"),
        (["train", "--backbone", "resnet18"], 2, "--data"),
        (["frobnicate"], 2, "frobnicate"),
        (["eval", "--model", "{tmp}", "--data", "{shapes}"], 1, "model.safetensors not found"),
        (["predict", "--model", "{run}", "{tmp}/nope.jpg"], 1, "no such image file"),
        (["predict", "--model", "{run}", "{tmp}/broken.jpg"], 1, "cannot read image"),
        (["eval", "--model", "{run}", "--data", "{tmp}/other"], 1, "does not know"),
        (
            ["eval", "--model", "{run}", "--data", "{shapes}", "--errors", "{tmp}/no/e.csv"],
            1,
            "does not exist",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(
    argv: list[str], code: int, needle: str, shapes: Path, trained: tuple[Path, Result], tmp_path: Path
) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "other" / "val" / "dog").mkdir(parents=True)
    shutil.copy(next((shapes / "val" / "circle").iterdir()), tmp_path / "other" / "val" / "dog" / "a.jpg")
    paths = {"tmp": tmp_path, "shapes": shapes, "run": trained[0]}
    result = run(*(arg.format(**paths) for arg in argv))
    line = assert_one_line_error(result, code)
    assert needle in line


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "transferkit" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--freeze" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ argument parsing


@pytest.mark.parametrize(
    ("text", "policy", "kwargs"),
    [
        ("all", "all", {}),
        ("none", "none", {}),
        ("last_n:3", "last_n", {"n": 3}),
        ("gradual", "gradual", {}),
        ("gradual:2", "gradual", {"n": 2}),
        ("gradual:0:2:3", "gradual", {"n": 0, "step": 2, "every": 3}),
        ("lora", "lora", {}),
        ("lora:4:8", "lora", {"r": 4, "alpha": 8}),
        ("bitfit", "bitfit", {}),
        ("norm", "norm", {}),
    ],
)
def test_parse_freeze(text: str, policy: str, kwargs: dict[str, int]) -> None:
    spec = parse_freeze(text)
    assert (spec.policy, spec.kwargs, spec.text) == (policy, kwargs, text)


@pytest.mark.parametrize(
    "text",
    ["last_n", "last_n:1:2", "gradual:1:1:1:1", "gradual:x", "all:2", "top3", "lora:4:8:1", "bitfit:2"],
)
def test_parse_freeze_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_freeze(text)


def test_parse_pretrained(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    assert parse_pretrained("true") is True and parse_pretrained("False") is False
    assert parse_pretrained("IMAGENET1K_V2") == "IMAGENET1K_V2"
    assert parse_pretrained(str(weights)) == str(weights)  # an existing file, whatever its suffix
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        parse_pretrained(str(tmp_path / "missing.safetensors"))


# -------------------------------------------------------------------------------------------- demo


def test_demo_quick_leaves_the_plots_and_reuses_its_folder(tmp_path: Path) -> None:
    """What the README promises of its first command: the model and the two plots (matplotlib is a
    dependency; .ci/run checks the same in a fresh virtual environment)."""
    out = tmp_path / "demo"
    stale = out / "data" / "train" / "old"
    stale.mkdir(parents=True)
    (out / "data" / ".transferkit-demo").write_text("from an earlier demo")
    result = run("demo", "--quick", "--out", out)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "epoch 1/1" in result.err  # the progress bar
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "What happened", "Where to look", "Next steps"):
        assert step in result.out
    assert "norm mode" in result.out  # the freeze summary
    assert f"transferkit eval --model {out} --data {out / 'data'}" in result.out
    accuracy = float(re.search(r"^\s+accuracy\s+([\d.]+)$", result.out, re.M).group(1))
    assert f"val accuracy {accuracy:.2f}" in result.out
    predictions = result.out.split("[5/5]")[1].split("What happened")[0].strip().splitlines()[1:]
    assert len(predictions) == 3 and all(re.search(r"\.jpg: \w+ \d\.\d{3}", p) for p in predictions)
    assert "matplotlib" not in result.out
    for name in ("history.png", "predictions.png"):
        assert (out / name).read_bytes().startswith(PNG), name
        assert f"{out / name} " in result.out  # the summary points to it
    for name in ("config.json", "model.safetensors", "transferkit.json", "history.json"):
        assert (out / name).is_file()
    assert load_model(out).classes == ["circle", "square", "triangle"]
    assert not stale.exists()  # the previous demo's data was replaced, not mixed in
    assert len(list((out / "data" / "val").rglob("*.jpg"))) == 6


def test_demo_keeps_a_data_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("precious")
    line = assert_one_line_error(run("demo", "--quick", "--out", tmp_path))
    assert "not written by transferkit demo" in line
    assert (tmp_path / "data" / "mine.txt").read_text() == "precious"


SCRIPT = Path(sys.executable).parent / "transferkit"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="the console script is not installed next to python")
def test_console_script_is_installed() -> None:
    result = subprocess.run([str(SCRIPT), "list", "heads"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == list_heads() and "fcn" in list_heads()


def test_matplotlib_is_a_core_dependency() -> None:
    """``pip install -e .`` alone must bring what draws the README's plots."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "matplotlib" in [re.split(r"[<>=!~ \[]", d)[0] for d in project["dependencies"]]
