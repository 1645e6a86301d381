"""What an exported model expects: its preprocessing, stated exactly and stored in the file.

`preprocessing_spec` turns a model's evaluation preprocessing (``model.data_config`` and its task's
resize rule, `transferkit.data.evaluation_geometry`) into plain JSON: colour mode, resize, centre crop,
scaling, mean and std, and the input tensor. `transferkit.io.export.export` stores it in the file (ONNX
``metadata_props``, the ``extra_files`` of a ``.pt2`` program or a TorchScript file) under
`PREPROCESSING_KEY`; `read_preprocessing` reads it back and `apply_preprocessing` follows it step by step
(the steps ``model.predict`` takes), so a deployment can check its own pipeline against it.

Examples:
    >>> config = {"input_size": (3, 64, 64)}
    >>> model = build_model("resnet18", num_classes=2, pretrained=False, data_config=config)
    >>> spec = preprocessing_spec(model)
    >>> spec["resize"], spec["center_crop"]
    ({'shorter_side': 73}, [64, 64])
    >>> describe_preprocessing(spec)  # doctest: +ELLIPSIS
    'RGB image, resize the shorter side to 73 px (bilinear, antialiased), crop the centre 64x64, ...'
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..data.transforms import evaluation_geometry
from ..preprocessing import resolve_data_config
from ..tasks import get_task

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = [
    "PREPROCESSING_KEY",
    "apply_preprocessing",
    "describe_preprocessing",
    "preprocessing_spec",
    "read_preprocessing",
]

PREPROCESSING_KEY = "transferkit.preprocessing"
_EXTRA_FILE = "transferkit_preprocessing.json"  # its name inside .pt2 and TorchScript files


def preprocessing_spec(
    model: TransferModel, input_size: Sequence[int] | None = None, *, normalize_in_graph: bool = False
) -> dict[str, Any]:
    """The exact steps from an image to the exported model's input, as plain JSON data.

    Args:
        model: The model; its ``data_config`` and task decide the steps.
        input_size: ``(H, W)`` the file takes, when not the model's own input size.
        normalize_in_graph: Whether the file normalises itself (its input is then scaled to [0, 1] only).

    Returns:
        ``task``, ``classes``, ``color`` (``"RGB"`` or ``"L"``), ``resize`` (``{"shorter_side": S}``, keeping
        the aspect ratio, or ``{"size": [H, W]}``), ``interpolation``, ``antialias``, ``center_crop``
        (``[H, W]`` or None), ``scale`` (1/255: uint8 to [0, 1]), ``mean``, ``std``, ``normalize_in_graph``
        and ``input`` (name, shape ``["N", C, H, W]``, dtype, layout).
    """
    config = model.data_config
    if input_size is not None:
        config = resolve_data_config({**config, "input_size": (config["input_size"][0], *input_size)})
    channels, height, width = config["input_size"]
    resize, crop = evaluation_geometry(config, center_crop=get_task(model.task).eval_center_crop)
    return {
        "task": model.task,
        "classes": model.classes,
        "color": "L" if channels == 1 else "RGB",
        "resize": {"shorter_side": resize} if isinstance(resize, int) else {"size": list(resize)},
        "interpolation": config["interpolation"],
        "antialias": True,
        "center_crop": list(crop) if crop is not None else None,
        "scale": 1 / 255,
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "normalize_in_graph": bool(normalize_in_graph),
        "input": {"name": "x", "shape": ["N", channels, height, width], "dtype": "float32", "layout": "NCHW"},
    }


def describe_preprocessing(spec: Mapping[str, Any]) -> str:
    """One sentence that states ``spec``'s steps, for messages and model cards.

    Examples:
        >>> spec = {"color": "RGB", "resize": {"size": [64, 64]}, "interpolation": "bilinear",
        ...         "center_crop": None, "mean": [0.5], "std": [0.25], "normalize_in_graph": True,
        ...         "input": {"shape": ["N", 3, 64, 64]}}
        >>> print(describe_preprocessing(spec).replace("; ", ";\\n"))
        RGB image, resize to 64x64 (bilinear, antialiased), scale to [0, 1] -> x float32 [N, 3, 64, 64];
        the file normalises itself (mean [0.5], std [0.25])
    """
    resize = spec["resize"]
    if "shorter_side" in resize:
        steps = [f"resize the shorter side to {resize['shorter_side']} px"]
    else:
        steps = [f"resize to {resize['size'][0]}x{resize['size'][1]}"]
    steps[0] += f" ({spec['interpolation']}, antialiased)"
    if spec["center_crop"]:
        steps.append(f"crop the centre {spec['center_crop'][0]}x{spec['center_crop'][1]}")
    steps.append("scale to [0, 1]")
    stats = f"mean {spec['mean']}, std {spec['std']}"
    if not spec["normalize_in_graph"]:
        steps.append(f"normalise ({stats})")
    shape = ", ".join(str(v) for v in spec["input"]["shape"])
    text = f"{spec['color']} image, {', '.join(steps)} -> x float32 [{shape}]"
    return text + (f"; the file normalises itself ({stats})" if spec["normalize_in_graph"] else "")


def apply_preprocessing(image: Image.Image, spec: Mapping[str, Any]) -> Tensor:
    """Follow ``spec`` for one PIL image: the input tensor ``[C, H, W]`` the exported file takes.

    The steps are those of ``model.predict``: torchvision's resize of the uint8 image tensor (antialiased),
    the centre crop, scaling to [0, 1] and, unless the file normalises itself, normalisation.

    Examples:
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)
        >>> apply_preprocessing(Image.new("RGB", (300, 200)), preprocessing_spec(model)).shape
        torch.Size([3, 224, 224])
    """
    tensor = TF.pil_to_tensor(image.convert(spec["color"]))
    resize = spec["resize"]
    size = [resize["shorter_side"]] if "shorter_side" in resize else list(resize["size"])
    tensor = TF.resize(tensor, size, interpolation=InterpolationMode(spec["interpolation"]), antialias=True)
    if spec["center_crop"]:
        tensor = TF.center_crop(tensor, list(spec["center_crop"]))
    tensor = TF.to_dtype(tensor, torch.float32, scale=True)
    if not spec["normalize_in_graph"]:
        tensor = TF.normalize(tensor, list(spec["mean"]), list(spec["std"]))
    return tensor


def metadata_text(spec: Mapping[str, Any]) -> str:
    """``spec`` as the JSON text stored in exported files."""
    return json.dumps(spec, sort_keys=True)


def read_preprocessing(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The preprocessing an exported file states (`preprocessing_spec`), from its metadata.

    Raises:
        ValueError: The file holds no transferkit preprocessing (exported elsewhere, or before it was stored).

    Examples:
        >>> read_preprocessing("model.onnx")["center_crop"]  # doctest: +SKIP
        [64, 64]
    """
    path = Path(path)
    suffix = path.suffix.lower()
    text: str | bytes | None
    if suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(PREPROCESSING_KEY)
    else:
        extra = {_EXTRA_FILE: ""}
        if suffix == ".pt2":
            torch.export.load(path, extra_files=extra)
        else:
            with warnings.catch_warnings():  # PyTorch marks TorchScript deprecated; the file is one
                warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
                torch.jit.load(str(path), _extra_files=extra, map_location="cpu")
        text = extra[_EXTRA_FILE] or None
    if not text:
        raise ValueError(
            f"{path} states no transferkit preprocessing; export it again with model.export() or "
            "transferkit export"
        )
    return dict(json.loads(text))


def extra_files(spec: Mapping[str, Any]) -> dict[str, str]:
    """The ``extra_files`` that carry ``spec`` in ``.pt2`` and TorchScript files."""
    return {_EXTRA_FILE: metadata_text(spec)}
