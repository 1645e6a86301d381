"""Hostile images and damaged models through ``model.predict`` and ``transferkit predict`` (issue #23).

Each case is tiny: the decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is lowered so that a
few thousand pixels stand for the gigabytes a real bomb asks for. What a user gets: an image too large,
as it is or once the evaluation resize has scaled it, is an ``OSError`` naming the file, raised before
it is decoded (the CLI reports it and predicts the other files); float and 32-bit integer images load
scaled to 8 bits, or fail naming the file when their values fit no 8-bit reading; predict holds one
batch at a time; a model whose outputs are not finite is an error naming the images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import transferkit.inference as predict_module
from transferkit import build_model, cli
from transferkit.data import ClassFolder
from transferkit.inference import predict_images, read_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE = 32  # the models' image size: the evaluation resize scales the shorter side to 36 (32 / 0.875)
LIMIT = 100_000  # the lowered decompression-bomb limit


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model("resnet18", num_classes=2, classes=["a", "b"], pretrained=False).eval()


def _png(path: Path, width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)
    return path


def _saved_run(model: Any, folder: Path) -> Path:
    """A run folder holding ``model``, trained (as far as the CLI knows) at ``SIDE`` pixels."""
    model.save(folder)
    (folder / "transferkit.json").write_text(json.dumps({"image_size": SIDE}))
    return folder


# ---------------------------------------------------------------------- 1. a strip the resize blows up


def test_predict_refuses_a_strip_the_evaluation_resize_would_blow_past_the_pixel_limit(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)
    strip = _png(tmp_path / "strip.png", 2000, 1)  # 2,000 pixels; 36 x 72,000 = 2.6 million once resized
    good = _png(tmp_path / "good.png", SIDE, SIDE)
    with pytest.raises(OSError, match="MAX_IMAGE_PIXELS") as info:
        predict_images(model, [good, strip], image_size=SIDE)
    assert str(strip) in str(info.value) and "36x72,000" in str(info.value)
    with pytest.raises(ValueError, match="image 1: .*MAX_IMAGE_PIXELS"):  # the same strip, in memory
        predict_images(model, [Image.open(good), Image.open(strip)], image_size=SIDE)
    panorama = _png(tmp_path / "panorama.png", 400, 20)  # 20:1, like 4000x200: 36 x 720 once resized
    assert len(predict_images(model, [panorama, good], image_size=SIDE, top_k=1)) == 2


def test_cli_predict_reports_the_strip_and_predicts_the_other_files(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _saved_run(model, tmp_path / "run")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)
    good = _png(tmp_path / "images" / "a_good.png", SIDE, SIDE)
    strip = _png(tmp_path / "images" / "b_strip.png", 1, 2000)
    assert cli.main(["predict", "--model", str(run), str(good), str(strip)]) == 1  # as for unreadable files
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.strip().splitlines()] == [str(good)]
    assert f"skipped {strip}" in err and "MAX_IMAGE_PIXELS" in err


# ------------------------------------------------------------------ 2. over the limit, under twice it


def test_an_image_over_the_pixel_limit_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL itself only warns below 2,000 pixels
    path = _png(tmp_path / "root" / "only" / "big.png", 40, 30)  # 1,200 pixels
    before = path.read_bytes()
    for read in (read_image, lambda p: ClassFolder(p.parent.parent, pil_to_tensor)[0][0]):
        with pytest.raises(OSError, match="MAX_IMAGE_PIXELS") as info:
            read(path)
        assert str(path) in str(info.value) and "40x30 = 1,200 pixels" in str(info.value)
    assert path.read_bytes() == before


# ------------------------------------------------------------------------ 3. float and 32-bit images


def _tiff(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def _ramp(low: float, high: float, dtype: type) -> np.ndarray:
    return np.linspace(low, high, 16 * 8).reshape(8, 16).astype(dtype)


DEEP_LOADS = {
    "float in [0, 1]": (_ramp(0, 1, np.float32), "F"),
    "float in [0, 255]": (_ramp(0, 255, np.float32), "F"),
    "32-bit int in 0..65535": (_ramp(0, 65535, np.int32), "I"),
}


@pytest.mark.parametrize("case", DEEP_LOADS)
def test_float_and_32_bit_images_load_scaled_to_8_bits(case: str, tmp_path: Path) -> None:
    pixels, mode = DEEP_LOADS[case]
    path = _tiff(tmp_path / "deep.tif", pixels)
    assert Image.open(path).mode == mode
    loaded = pil_to_tensor(read_image(path)).int()
    assert loaded.shape == (3, 8, 16) and (loaded[0] == loaded[1]).all() and (loaded[0] == loaded[2]).all()
    assert loaded[0, 0, 0] <= 1 and loaded[0, -1, -1] >= 254  # black to white, as the values run
    assert abs(int(loaded[0, 4, 0]) - 128.5) <= 2  # half way (value 64 of 0..127) is mid grey


DEEP_FAILS = {
    "float in [-1, 1]": (_ramp(-1, 1, np.float32), "-1..1"),
    "float with NaN": (np.full((8, 16), math.nan, np.float32), "NaN"),
    "32-bit int past 16 bits": (_ramp(0, 1_000_000, np.int32), "0..1000000"),
}


@pytest.mark.parametrize("case", DEEP_FAILS)
def test_float_and_32_bit_values_no_8_bit_reading_fits_fail_naming_the_file(
    case: str, tmp_path: Path
) -> None:
    pixels, said = DEEP_FAILS[case]
    path = _tiff(tmp_path / "deep.tif", pixels)
    with pytest.raises(OSError, match="cannot read image file") as info:
        read_image(path)
    assert str(path) in str(info.value) and said in str(info.value)


# ------------------------------------------------------------------------- 4. one batch in memory


def test_predict_reads_one_batch_ahead_of_the_model_and_answers_in_order(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0), (0, 0, 0), (255, 255, 255), (9, 99, 199)]
    paths = [_png(tmp_path / f"{i}.png", SIDE, SIDE, c) for i, c in enumerate(colours)]
    alone = [predict_images(model, path, image_size=SIDE, top_k=2) for path in paths]
    read, seen, ahead = [0], [0], []
    original = predict_module.read_image

    def counting_read(path: Any, **kwargs: Any) -> Image.Image:
        read[0] += 1
        ahead.append(read[0] - seen[0])  # images read that the model has not seen yet
        return original(path, **kwargs)

    def count_seen(module: Any, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        seen[0] += len(inputs[0])

    monkeypatch.setattr(predict_module, "read_image", counting_read)
    hook = model.register_forward_hook(count_seen)
    try:
        answers = predict_images(model, paths, image_size=SIDE, top_k=2, batch_size=2)
    finally:
        hook.remove()
    assert max(ahead) == 2 and read[0] == seen[0] == len(paths)
    assert [[name for name, _ in a] for a in answers] == [[name for name, _ in a] for a in alone]
    for got, want in zip(answers, alone, strict=True):
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-5)


# ------------------------------------------------------------------------ 5. non-finite outputs


@pytest.fixture(scope="module")
def nan_model() -> Any:
    model = build_model("resnet18", num_classes=2, classes=["a", "b"], pretrained=False).eval()
    with torch.no_grad():
        for param in model.head.parameters():
            param.fill_(math.nan)  # what a diverged training run leaves behind
    return model


def test_predict_with_non_finite_outputs_is_an_error_naming_the_images(
    nan_model: Any, tmp_path: Path
) -> None:
    paths = [_png(tmp_path / f"{i}.png", SIDE, SIDE) for i in range(2)]
    with pytest.raises(ValueError, match="outputs are not finite") as info:
        predict_images(nan_model, paths, image_size=SIDE)
    message = str(info.value)
    assert all(str(path) in message for path in paths) and "diverged" in message
    with pytest.raises(ValueError, match="not finite .* image 0"):
        predict_images(nan_model, torch.zeros(3, SIDE, SIDE))


def test_cli_predict_with_non_finite_outputs_fails_naming_the_files(
    nan_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _saved_run(nan_model, tmp_path / "run")
    image = _png(tmp_path / "x.png", SIDE, SIDE)
    assert cli.main(["predict", "--model", str(run), str(image)]) == 1
    out, err = capsys.readouterr()
    assert "nan" not in out and "outputs are not finite" in err and str(image) in err
