"""A model keeps the preprocessing it was trained at, and every way of running it uses that preprocessing.

`load_model(run).predict`, ``transferkit predict`` and an exported ONNX file run with the preprocessing its
metadata states must agree: a model trained at 64 px and asked at the backbone's 224 px answers wrongly
without a word.
"""

from __future__ import annotations

import csv
import doctest
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_runner import run
from torch.utils.data import DataLoader, TensorDataset

import transferkit.io.export_spec
import transferkit.preprocessing
from transferkit import Trainer, build_model, load_model
from transferkit.data import image_folder_loaders, make_shapes_folder, segmentation_folder_loaders
from transferkit.data.synthetic import make_shapes_segmentation_folder
from transferkit.io.export_spec import apply_preprocessing, preprocessing_spec, read_preprocessing

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [transferkit.preprocessing, transferkit.io.export_spec])
def test_doctests_hold(module) -> None:
    result = doctest.testmod(module, extraglobs={"build_model": build_model}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _fit(model, loaders) -> None:
    Trainer(model, epochs=1, progress=False, lr=1e-3).fit(loaders)


def test_the_trainer_records_what_transferkit_loaders_give(tmp_path: Path) -> None:
    root = make_shapes_folder(
        tmp_path / "data", num_classes=2, per_class={"train": 2, "val": 1}, image_size=48
    )
    model = build_model("resnet18", num_classes=2, pretrained=False)
    assert model.data_config["input_size"] == (3, 224, 224)
    _fit(model, image_folder_loaders(root, model, batch_size=4, image_size=48, num_workers=0))
    expected = {**model.backbone.data_config, "input_size": (3, 48, 48)}
    assert model.data_config == expected
    model.save(tmp_path / "run")
    assert load_model(tmp_path / "run").data_config == expected
    # a later loader for the trained model follows the trained size
    loaders = image_folder_loaders(root, model, batch_size=2, num_workers=0)
    assert next(iter(loaders["val"]))[0].shape[-2:] == (48, 48)


def test_segmentation_loaders_are_recorded_too(tmp_path: Path) -> None:
    root = make_shapes_segmentation_folder(tmp_path / "seg", per_split={"train": 4, "val": 2}, image_size=40)
    model = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=4, pretrained=False)
    _fit(model, segmentation_folder_loaders(root, model, batch_size=2, image_size=40, num_workers=0))
    assert model.data_config["input_size"] == (3, 40, 40)


def test_loaders_that_do_not_say_their_preprocessing_still_give_the_size() -> None:
    data = TensorDataset(torch.randn(4, 3, 40, 36), torch.tensor([0, 1, 0, 1]))
    model = build_model("resnet18", num_classes=2, pretrained=False)
    _fit(model, DataLoader(data, batch_size=2))
    assert model.data_config["input_size"] == (3, 40, 36)
    assert model.data_config["mean"] == model.backbone.data_config["mean"]
    # a preprocessing the user stated is kept
    model = build_model("resnet18", num_classes=2, pretrained=False, data_config={"input_size": (3, 40, 36)})
    model.data_config = {**model.data_config, "mean": (0.5, 0.5, 0.5)}
    _fit(model, DataLoader(data, batch_size=2))
    assert model.data_config["mean"] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"size": 64}, r"unknown key\(s\) \['size'\]"),
        ({"input_size": (3, 0, 64)}, r"input_size \(3, 0, 64\) is out of range"),
        ({"std": (0.2, 0.0, 0.2)}, r"std must be > 0"),
        ({"mean": (0.5, 0.5)}, r"mean has 2 values for 3 channels"),
        ({"crop_pct": 1.5}, r"crop_pct must be a number in \(0, 1\]"),
        ({"interpolation": "cubic"}, r"interpolation 'cubic' is unknown"),
    ],
)
def test_a_bad_data_config_is_refused_naming_the_key(config, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("resnet18", num_classes=2, pretrained=False, data_config=config)


def test_a_damaged_saved_data_config_names_the_field(tmp_path: Path) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=False, data_config={"input_size": (3, 64, 64)})
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["data_config"]["crop_pct"] = 7
    from transferkit.models.loading import check_saved_config

    with pytest.raises(
        ValueError, match=r"c\.json: field 'data_config' crop_pct must be a number in \(0, 1\]"
    ):
        check_saved_config(config, "c.json")


@pytest.mark.parametrize("suffix", [".onnx", ".pt2", ".ts"])
def test_every_export_states_its_preprocessing(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("onnxruntime")
    model = build_model("resnet18", num_classes=2, pretrained=False, data_config={"input_size": (3, 64, 64)})
    spec = read_preprocessing(model.export(tmp_path / f"m{suffix}"))
    assert spec == json.loads(json.dumps(preprocessing_spec(model)))
    assert spec["resize"] == {"shorter_side": 73} and spec["center_crop"] == [64, 64]
    assert spec["input"]["shape"] == ["N", 3, 64, 64] and not spec["normalize_in_graph"]


def test_normalisation_baked_into_the_graph_gives_the_same_outputs(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = build_model("resnet18", num_classes=2, pretrained=False, data_config={"input_size": (3, 32, 32)})
    model.eval()
    plain = model.export(tmp_path / "plain.onnx")
    baked = model.export(tmp_path / "baked.onnx", normalize_in_graph=True)
    assert read_preprocessing(baked)["normalize_in_graph"]
    from PIL import Image

    image = Image.effect_mandelbrot((50, 40), (-2, -1.2, 0.6, 1.2), 50).convert("RGB")
    outputs = []
    for path in (plain, baked):
        x = apply_preprocessing(image, read_preprocessing(path))[None].numpy()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": x})[0])
    torch.testing.assert_close(
        torch.from_numpy(outputs[1]), torch.from_numpy(outputs[0]), atol=1e-5, rtol=1e-4
    )


def test_a_file_without_preprocessing_is_named(tmp_path: Path) -> None:
    module = torch.jit.script(torch.nn.Identity())
    torch.jit.save(module, str(tmp_path / "other.ts"))
    with pytest.raises(ValueError, match=r"other\.ts states no transferkit preprocessing"):
        read_preprocessing(tmp_path / "other.ts")


# ------------------------------------------------------------ Python, the CLI and ONNX agree (fresh process)

_AGREE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, onnxruntime, torch
    from PIL import Image
    from transferkit import load_model
    from transferkit.io.export_spec import apply_preprocessing, read_preprocessing

    run, onnx_path, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    model = load_model(run)
    spec = read_preprocessing(onnx_path)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = {"python": [], "onnx": [], "size": list(model.data_config["input_size"])}
    for path in files:
        image = Image.open(path).convert("RGB")
        logits = torch.from_numpy(session.run(None, {"x": apply_preprocessing(image, spec)[None].numpy()})[0])
        if model.task == "classification":
            out["python"].append(dict(model.predict(path, top_k=model.num_classes)))
            out["onnx"].append(dict(zip(spec["classes"], logits[0].softmax(0).tolist())))
        else:
            size = image.size[::-1]
            mask = torch.nn.functional.interpolate(logits, size=size, mode="bilinear")[0].argmax(0)
            out["python"].append(model.predict(path).tolist())
            out["onnx"].append(mask.tolist())
    print(json.dumps(out))
    """
)


def _trained_run(tmp_path: Path, task: str) -> tuple[Path, list[Path]]:
    if task == "classification":
        data = make_shapes_folder(
            tmp_path / "data", num_classes=2, per_class={"train": 2, "val": 2}, image_size=80
        )
        head, files = [], sorted((data / "val").rglob("*.jpg"))
    else:
        data = make_shapes_segmentation_folder(
            tmp_path / "data", per_split={"train": 4, "val": 3}, image_size=80
        )
        head, files = ["--head", "fcn", "--neck", "fpn_lite"], sorted((data / "val" / "images").iterdir())
    out = tmp_path / "run"
    args = ["train", "--data", data, "--out", out, "--epochs", "1", "--image-size", "64", "--batch-size", "4"]
    code, _, err = run(*args, *head, "--backbone", "resnet18", "--pretrained", "false")
    assert code == 0, err
    code, _, err = run("export", "--model", out, "--out", tmp_path / "model.onnx")
    assert code == 0, err
    return out, files


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_python_cli_and_onnx_run_at_the_trained_preprocessing(tmp_path: Path, task: str) -> None:
    pytest.importorskip("onnxruntime")
    out, files = _trained_run(tmp_path, task)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _AGREE, str(out), str(tmp_path / "model.onnx"), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.splitlines()[-1])
    assert answers["size"] == [3, 64, 64]
    table = tmp_path / "predicted.csv"
    code, printed, err = run("predict", "--model", out, *files, "--top-k", "2", "--csv", table)
    assert code == 0, err
    with open(table, newline="") as f:
        rows = list(csv.reader(f))[1:]  # path, rank, class, probability (or pixel_share), full precision
    assert [row[0] for row in rows] == [str(path) for path in files for _ in range(2)]
    for index, (python, onnx) in enumerate(zip(answers["python"], answers["onnx"])):
        cli = {name: float(value) for _, _, name, value in rows[2 * index : 2 * index + 2]}
        if task == "classification":
            assert python.keys() == onnx.keys()
            for name in python:
                assert abs(python[name] - onnx[name]) < 1e-4, (name, python, onnx)
            for name, value in cli.items():
                assert abs(value - python[name]) < 1e-4
        else:
            python, onnx = torch.tensor(python), torch.tensor(onnx)
            assert (python == onnx).float().mean() > 0.999  # bilinear ties aside
            shares = torch.bincount(python.flatten(), minlength=4).float() / python.numel()
            for name, value in cli.items():
                index = ["background", "circle", "square", "triangle"].index(name)
                assert abs(value - shares[index].item()) < 1e-4
