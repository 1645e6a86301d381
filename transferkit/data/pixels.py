"""Images held in memory (numpy arrays, torch tensors) checked and turned into PIL images.

An array of images is ``[N, H, W]`` (grey), ``[N, H, W, C]`` or ``[N, C, H, W]`` with ``C`` 1 (grey),
3 (RGB) or 4 (RGBA, the alpha channel dropped). The layout is read from the shape: the axis of size 1,
3 or 4 is the channel axis; a shape where both could be (``[N, 3, 32, 3]``) is ambiguous and refused
unless ``layout=`` names it. Pixels are uint8 (or another integer type) in 0..255, or floats in [0, 1];
anything else is refused rather than clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["LAYOUTS", "array_to_pil", "as_numpy", "image_layout", "pixel_scale", "to_pil"]

LAYOUTS = ("NHW", "NHWC", "NCHW")
_CHANNELS = (1, 3, 4)


def as_numpy(values: Any, what: str = "images") -> np.ndarray:
    """``values`` (a numpy array, a torch tensor or a nested list) as a numpy array, without copying
    where it can (a CPU tensor shares its memory)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.float() if values.dtype == torch.bfloat16 else values).numpy()
    if isinstance(values, np.ndarray):
        return values
    if isinstance(values, (list, tuple)):
        return np.asarray(values)
    raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(values).__name__}")


def image_layout(shape: tuple[int, ...], layout: str | None = None) -> str:
    """The layout (``"NHW"``, ``"NHWC"`` or ``"NCHW"``) of a batch of images of ``shape``.

    Raises:
        ValueError: A shape with no channel axis of 1, 3 or 4, one where both ``[N, H, W, C]`` and
            ``[N, C, H, W]`` fit (pass ``layout=``), or a ``layout`` that does not fit the shape.

    Examples:
        >>> image_layout((8, 32, 32, 3)), image_layout((8, 3, 32, 32)), image_layout((8, 28, 28))
        ('NHWC', 'NCHW', 'NHW')
        >>> image_layout((8, 3, 32, 3), "NCHW")
        'NCHW'
    """
    shape = tuple(int(s) for s in shape)
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        channels = {"NHW": 1, "NHWC": shape[-1], "NCHW": shape[1] if len(shape) > 1 else 0}[layout]
        if len(shape) != len(layout) or channels not in _CHANNELS:
            raise ValueError(
                f"images of shape {list(shape)} are not {layout}: that needs {len(layout)} axes with a "
                "channel axis of 1, 3 or 4"
            )
        return layout
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise ValueError(
            f"images must be [N, H, W], [N, H, W, C] or [N, C, H, W]; got {len(shape)} axes {list(shape)} "
            "(one image? add the batch axis: images[None])"
        )
    last, second = shape[3] in _CHANNELS, shape[1] in _CHANNELS
    if last and second:
        raise ValueError(
            f"images of shape {list(shape)} could be [N, H, W, C] or [N, C, H, W]; pass layout='NHWC' or "
            "layout='NCHW'"
        )
    if last or second:
        return "NHWC" if last else "NCHW"
    raise ValueError(
        f"images of shape {list(shape)} have no channel axis of size 1, 3 or 4 (grey, RGB, RGBA) first "
        "or last; pass [N, H, W], [N, H, W, C] or [N, C, H, W]"
    )


def pixel_scale(images: np.ndarray, what: str = "images") -> int:
    """The factor that brings the pixels of ``images`` to 0..255: 1 for integers, 255 for floats.

    Raises:
        TypeError: Pixels that are neither integers nor floats (bool, complex, objects).
        ValueError: Integers outside 0..255, floats outside [0, 1] or not finite, or no images at all.

    Examples:
        >>> pixel_scale(np.zeros((2, 4, 4), np.uint8)), pixel_scale(np.ones((2, 4, 4), np.float32))
        (1, 255)
    """
    if images.size == 0:
        raise ValueError(f"{what} hold no pixels (shape {list(images.shape)})")
    kind = images.dtype.kind
    if kind not in "uif":
        raise TypeError(f"{what} have dtype {images.dtype}; pass uint8 pixels (0..255) or floats in [0, 1]")
    if kind == "f" and not np.isfinite(images).all():
        raise ValueError(f"{what} hold NaN or infinite pixels; replace them before loading")
    low, high = images.min().item(), images.max().item()
    if kind == "f":
        if low < 0 or high > 1:
            raise ValueError(
                f"float {what} span {low:g}..{high:g}; float pixels must lie in [0, 1] (for 0..255 "
                "values pass images.astype(np.uint8), or divide by 255)"
            )
        return 255
    if images.dtype != np.uint8 and (low < 0 or high > 255):
        raise ValueError(
            f"{images.dtype} {what} span {low}..{high}; integer pixels must lie in 0..255 (8 bits); "
            "rescale them (16-bit: >> 8), or pass floats in [0, 1]"
        )
    return 1


def to_pil(image: np.ndarray, layout: str, scale: int) -> Image.Image:
    """One image of a batch in ``layout`` (without the ``N``) as an RGB PIL image.

    Examples:
        >>> to_pil(np.ones((3, 4, 5), np.float32), "NCHW", 255).size, to_pil(np.zeros((4, 5)), "NHW", 1).mode
        ((5, 4), 'RGB')
    """
    if layout == "NCHW":
        image = np.moveaxis(image, 0, -1)
    pixels = np.rint(image * scale) if scale != 1 else image
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(pixels).convert("RGB")  # 2-D: L, [H, W, 3]: RGB, [H, W, 4]: RGBA


def array_to_pil(image: np.ndarray, what: str = "image") -> Image.Image:
    """One image in a numpy array, ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (uint8 or float in [0, 1]),
    as an RGB PIL image.

    Raises:
        ValueError: A shape or pixel range that does not fit; the message starts with ``what``.

    Examples:
        >>> array_to_pil(np.zeros((24, 32, 3), np.uint8)).size
        (32, 24)
    """
    if image.ndim not in (2, 3):
        raise ValueError(
            f"{what} is an array of shape {list(image.shape)}; one image is [H, W], [H, W, C] or [C, H, W], "
            "a batch [N, H, W, C]"
        )
    try:
        layout = image_layout((1, *image.shape))
    except ValueError as err:
        raise ValueError(f"{what}: {err}".replace("images of shape [1, ", "shape [")) from None
    return to_pil(image, layout, pixel_scale(image, what))
