"""Odd and hostile image files through the loaders: each loads correctly or fails naming the file.

Every case is made with PIL in a temporary folder and read through `ClassFolder` (the classification
loaders' dataset), `SegmentationFolder`, and ``transferkit.inference.read_image`` (what ``model.predict``
and ``transferkit predict`` read files with). "Loads correctly"
means a 3-channel 8-bit image of the size a viewer would show, with the right colours; "fails" means an
``OSError`` whose message names the file. PIL's decompression-bomb limit stays in force throughout.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from transferkit.data import DEFAULT_DATA_CONFIG, ClassFolder, SegmentationFolder, build_transforms
from transferkit.inference import read_image

RED, BLUE = (255, 0, 0), (0, 0, 255)
W, H = 48, 32  # a landscape image: a rotation shows in the size


def _halves(mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (W, H), BLUE)
    image.paste(RED, (0, 0, W // 2, H))
    return image.convert(mode)


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG claiming ``width x height`` pixels: a few hundred bytes that would decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _write(path: Path, make: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    return path


def _save(image: Image.Image, **kwargs) -> Callable[[Path], None]:
    return lambda path: image.save(path, **kwargs)


def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _exif(orientation: int) -> Callable[[Path], None]:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _raw(_jpeg_bytes(_halves(), exif=exif))


def _palette_with_transparency() -> Image.Image:
    image = _halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    image.info["transparency"] = 0
    return image


def _sixteen_bit() -> Image.Image:
    ramp = np.linspace(0, 65535, W * H).reshape(H, W).astype(np.uint16)
    return Image.fromarray(ramp)  # mode I;16


# name: (file name, how to make it, expected (width, height, top-left RGB, bottom-right RGB) or None: error)
LOADS = {
    "cmyk jpeg": ("cmyk.jpg", _raw(_jpeg_bytes(_halves("CMYK"))), (W, H, RED, BLUE)),
    "exif orientation 6 (rotated 90 cw)": ("exif6.jpg", _exif(6), (H, W, RED, BLUE)),
    "exif orientation 8 (rotated 90 ccw)": ("exif8.jpg", _exif(8), (H, W, BLUE, RED)),
    "exif orientation 3 (upside down)": ("exif3.jpg", _exif(3), (W, H, BLUE, RED)),
    "palette with transparency": ("palette.png", _save(_palette_with_transparency()), (W, H, RED, BLUE)),
    "rgba": ("rgba.png", _save(_halves("RGBA")), (W, H, RED, BLUE)),
    "grayscale with alpha (LA)": ("la.png", _save(_halves("LA")), (W, H, None, None)),
    "1-bit": ("bits.png", _save(_halves("1")), (W, H, None, None)),
    "16-bit grayscale png": ("deep.png", _save(_sixteen_bit()), (W, H, (0, 0, 0), (255, 255, 255))),
    "1x1": ("dot.png", _save(Image.new("RGB", (1, 1), RED)), (1, 1, RED, RED)),
    "4000x200 panorama": (
        "pano.jpg",
        _save(_halves().resize((4000, 200)), quality=95),
        (4000, 200, RED, BLUE),
    ),
    "png bytes named .jpg": ("named.jpg", _save(_halves(), format="PNG"), (W, H, RED, BLUE)),
}
FAILS = {
    "truncated jpeg": ("cut.jpg", _raw(_jpeg_bytes(_halves().resize((400, 300)))[:2000])),
    "zero bytes": ("empty.jpg", _raw(b"")),
    "text named .png": ("notes.png", _raw(b"these are not pixels\n" * 20)),
    "decompression bomb header (10^10 pixels)": ("bomb.png", _raw(_huge_png_header(100_000, 100_000))),
}


def _close(pixel: torch.Tensor, rgb: tuple[int, int, int] | None) -> bool:
    return rgb is None or bool((pixel.int() - torch.tensor(rgb)).abs().max() <= 24)


def _check_loaded(tensor: torch.Tensor, expected: tuple) -> None:
    width, height, top_left, bottom_right = expected
    assert tensor.shape == (3, height, width) and tensor.dtype == torch.uint8
    assert _close(tensor[:, 1, 1] if height > 2 else tensor[:, 0, 0], top_left), tensor[:, 0, 0]
    assert _close(tensor[:, -2, -2] if height > 2 else tensor[:, -1, -1], bottom_right), tensor[:, -1, -1]


def _class_folder(path: Path, transform=pil_to_tensor) -> torch.Tensor:
    """The image through `ClassFolder` (root/<class>/<file>)."""
    return ClassFolder(path.parent.parent, transform)[0][0]


@pytest.mark.parametrize("case", LOADS)
def test_odd_image_loads_upright_in_rgb(case: str, tmp_path: Path) -> None:
    name, make, expected = LOADS[case]
    path = _write(tmp_path / "root" / "only" / name, make)
    _check_loaded(_class_folder(path), expected)
    small = _class_folder(path, build_transforms(DEFAULT_DATA_CONFIG, False, 32))
    assert small.shape == (3, 32, 32) and small.isfinite().all()  # the evaluation transform copes too


@pytest.mark.parametrize("case", LOADS)
def test_odd_image_loads_in_a_segmentation_folder(case: str, tmp_path: Path) -> None:
    name, make, (width, height, *_) = LOADS[case]
    _write(tmp_path / "images" / f"x{Path(name).suffix}", make)
    _write(tmp_path / "masks" / "x.png", _save(Image.new("L", (width, height))))
    image, mask = SegmentationFolder(tmp_path)[0]  # sizes must match: the image was turned upright
    assert image.mode == "RGB" and image.size == mask.size == (width, height)


@pytest.mark.parametrize("case", FAILS)
def test_unreadable_image_fails_naming_the_file(case: str, tmp_path: Path) -> None:
    name, make = FAILS[case]
    path = _write(tmp_path / "root" / "only" / name, make)
    before = path.read_bytes()
    with pytest.raises(OSError, match="cannot read image file") as info:
        _class_folder(path)
    assert str(path) in str(info.value)
    image = _write(tmp_path / "seg" / "images" / f"x{Path(name).suffix}", make)
    _write(tmp_path / "seg" / "masks" / "x.png", _save(Image.new("L", (4, 4))))
    with pytest.raises(OSError, match="cannot read image file") as info:
        SegmentationFolder(tmp_path / "seg")[0]
    assert str(image) in str(info.value)
    assert path.read_bytes() == before  # nothing rewrote the file
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's default limit is still in force


def test_decompression_bomb_over_the_configured_limit_names_the_file_and_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # a bomb is twice the limit: 2,000 pixels
    path = _write(tmp_path / "root" / "only" / "big.png", _save(Image.new("RGB", (60, 40))))
    with pytest.raises(OSError, match="MAX_IMAGE_PIXELS") as info:
        _class_folder(path)
    assert str(path) in str(info.value) and "decompression bomb" in str(info.value)
    _write(tmp_path / "root" / "only" / "big.png", _save(Image.new("RGB", (30, 30))))  # 900: under it
    assert _class_folder(path).shape == (3, 30, 30)


# --------------------------------------------------------------------- model.predict, transferkit predict
# model.predict and `transferkit predict` read files as the folder loaders do: prediction sees the pixels
# training saw.
@pytest.mark.parametrize("case", list(LOADS))
def test_predict_reads_odd_images_as_training_does(case: str, tmp_path: Path) -> None:
    name, make, expected = LOADS[case]
    path = _write(tmp_path / name, make)
    _check_loaded(pil_to_tensor(read_image(path)), expected)


@pytest.mark.parametrize("case", list(FAILS))
def test_predict_names_an_unreadable_image(case: str, tmp_path: Path) -> None:
    name, make = FAILS[case]
    path = _write(tmp_path / name, make)
    with pytest.raises(OSError) as info:
        read_image(path)
    assert str(path) in str(info.value)
