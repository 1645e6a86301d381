"""Exporting a detection model: decoding and NMS inside the file, outputs of fixed size per image.

`transferkit.io.export.export` turns to this module for a detection model. The file runs backbone ->
neck -> ``head.detect_fixed`` (`DetectionExport`) and gives, for an input ``x`` ``[N, C, H, W]``:

- ``boxes`` ``[N, D, 4]`` float32: (x1, y1, x2, y2) in the input's pixels;
- ``scores`` ``[N, D]`` float32;
- ``labels`` ``[N, D]`` int64: class indices (the file's ``classes`` name them);
- ``count`` ``[N]`` int64: the first ``count[i]`` rows of image ``i`` are its detections, best first; the
  rows after them are zero.

``D`` is the head's ``detections_per_img``, and its ``score_thresh`` and ``nms_thresh`` apply: the rows are
the detections ``model.eval()(x)`` returns. Which head exports to what:

- a head whose post-processing treats the whole batch at once (``head.export_limit`` is None: ``yolo``)
  exports to every format (`DETECTION_FORMATS`) with a dynamic batch;
- torchvision's heads (``fcos``, ``retinanet``, ``ssdlite``, ``fasterrcnn``) loop over the images in
  Python, so they export to ONNX only, for one image at a time: the file states its input as
  ``[1, C, H, W]`` and onnxruntime refuses another batch size. Other formats raise `ExportError`.

ONNX comes from torch.onnx's TorchScript-based exporter (``dynamo=False``), which traces the shapes the
data decides (NonZero, TopK with a computed k, torchvision's NMS as NonMaxSuppression); the
torch.export-based one stops at torchvision's branches on the number of boxes. ``.pt2`` files come from
``torch.export`` as for other models, ``.ts`` files from ``torch.jit.trace``.

Examples:
    >>> model = build_model("resnet18", neck="fpn_lite", head="yolo", num_classes=2, pretrained=False)
    >>> spec = detection_spec(model, preprocessing_spec(model, (64, 64)))
    >>> detection_formats(model), spec["outputs"]["boxes"]
    (('.onnx', '.pt2', '.ts'), {'shape': ['N', 100, 4], 'dtype': 'float32'})
    >>> model.export("boxes.onnx", input_size=(64, 64))  # doctest: +SKIP
    PosixPath('boxes.onnx')
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..errors import ExportError
from .export_spec import PREPROCESSING_KEY, extra_files, metadata_text

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = [
    "DETECTION_FORMATS",
    "DETECTION_OUTPUTS",
    "DetectionExport",
    "check_detection_format",
    "detection_formats",
    "detection_spec",
    "describe_outputs",
    "export_detection_onnx",
    "export_detection_torchscript",
]

DETECTION_OUTPUTS = ("boxes", "scores", "labels", "count")
DETECTION_FORMATS = (".onnx", ".pt2", ".ts")  # of a head with batched post-processing; others: ONNX only
_DTYPES = {"boxes": "float32", "scores": "float32", "labels": "int64", "count": "int64"}


class DetectionExport(nn.Module):
    """A detection model as its exported file runs it: ``x -> (boxes, scores, labels, count)``.

    Args:
        model: The detection model (its backbone, neck and head are shared, not copied).
        input_size: ``(H, W)`` of the inputs.
        mean: With ``std``, normalisation inside the graph (the input is then the image scaled to [0, 1]).
        std: See ``mean``.

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="yolo", num_classes=2, pretrained=False)
        >>> boxes, scores, labels, count = DetectionExport(model.eval(), (64, 64))(torch.randn(3, 3, 64, 64))
        >>> boxes.shape, scores.shape, labels.dtype, count.shape
        (torch.Size([3, 100, 4]), torch.Size([3, 100]), torch.int64, torch.Size([3]))
    """

    mean: Tensor | None  # buffers [1, C, 1, 1]
    std: Tensor | None

    def __init__(
        self,
        model: TransferModel,
        input_size: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = model.backbone, model.neck, model.head
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if (mean is None) != (std is None):
            raise ValueError("DetectionExport normalises with both mean and std, or with neither")
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        head: Any = self.head  # a DetectionHead, which the models layer above this one defines
        return tuple(head.detect_fixed(self.neck(self.backbone(x)), self.input_size))


def _limit(model: TransferModel) -> str | None:
    return getattr(model.head, "export_limit", None)


def detection_formats(model: TransferModel) -> tuple[str, ...]:
    """The file suffixes ``model`` exports to: `DETECTION_FORMATS`, or ``(".onnx",)`` for torchvision's heads.

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=2, pretrained=False)
        >>> detection_formats(model)
        ('.onnx',)
    """
    return DETECTION_FORMATS if _limit(model) is None else (".onnx",)


def check_detection_format(model: TransferModel, path: Path) -> None:
    """Raise `ExportError` unless ``model``'s head exports to ``path``'s format (`detection_formats`).

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=2, pretrained=False)
        >>> check_detection_format(model, Path("boxes.pt2"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        transferkit.errors.ExportError: cannot export this 'fcos' detection model to boxes.pt2: ...
    """
    suffix = path.suffix.lower()
    if suffix in detection_formats(model):
        return
    head = model.config.get("head", type(model.head).__name__)
    raise ExportError(
        f"cannot export this {head!r} detection model to {path}: {_limit(model)}. Export this model to "
        ".onnx instead"
    )


def detection_spec(model: TransferModel, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (`transferkit.io.export_spec.preprocessing_spec`) for ``model``'s exported file: its batch
    size (``"N"``, or 1 for torchvision's heads) and ``outputs`` (shape and dtype by name).

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=2, pretrained=False)
        >>> spec = detection_spec(model, preprocessing_spec(model, (64, 64)))
        >>> spec["input"]["shape"], spec["outputs"]["count"]
        ([1, 3, 64, 64], {'shape': [1], 'dtype': 'int64'})
    """
    batch: str | int = "N" if _limit(model) is None else 1
    head: Any = model.head
    rows = int(head.detections_per_img)
    shapes = {"boxes": [batch, rows, 4], "scores": [batch, rows], "labels": [batch, rows], "count": [batch]}
    outputs = {name: {"shape": shapes[name], "dtype": _DTYPES[name]} for name in DETECTION_OUTPUTS}
    shape = [batch, *spec["input"]["shape"][1:]]
    return {**spec, "input": {**spec["input"], "shape": shape}, "outputs": outputs}


def describe_outputs(spec: dict[str, Any]) -> str:
    """One sentence stating the outputs of a detection file from its `detection_spec`.

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=2, pretrained=False)
        >>> spec = detection_spec(model, preprocessing_spec(model, (64, 64)))
        >>> print(describe_outputs(spec).replace("; ", ";\\n"))
        boxes float32 [1, 100, 4] (x1, y1, x2, y2 in input pixels);
        scores float32 [1, 100];
        labels int64 [1, 100];
        count int64 [1]: the first count rows of each image are its detections, best first
    """
    shapes = {
        name: f"{name} {out['dtype']} [{', '.join(str(v) for v in out['shape'])}]"
        for name, out in spec["outputs"].items()
    }
    shapes["boxes"] += " (x1, y1, x2, y2 in input pixels)"
    listed = "; ".join(shapes[name] for name in DETECTION_OUTPUTS)
    return f"{listed}: the first count rows of each image are its detections, best first"


def export_detection_onnx(
    network: nn.Module, example: Tensor, path: Path, opset: int | None, spec: dict[str, Any]
) -> None:
    """Write ``network`` (a `DetectionExport`) to ``path`` as ONNX stating ``spec``, atomically.

    The batch is dynamic where ``spec``'s input shape says ``"N"`` and ``example``'s otherwise.

    Examples:
        >>> network, x = DetectionExport(model.eval(), (64, 64)), torch.randn(2, 3, 64, 64)  # doctest: +SKIP
        >>> export_detection_onnx(network, x, Path("boxes.onnx"), None, spec)  # doctest: +SKIP
    """
    import onnx

    names = ["x", *DETECTION_OUTPUTS]
    dynamic = {name: {0: "N"} for name in names} if spec["input"]["shape"][0] == "N" else None
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        with warnings.catch_warnings():
            # torch marks its TorchScript-based exporter deprecated; it is the one that captures
            # torchvision's post-processing (module docstring)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                network,
                (example,),
                str(staged),
                dynamo=False,
                input_names=names[:1],
                output_names=names[1:],
                dynamic_axes=dynamic,
                opset_version=opset,
            )
        proto = onnx.load(str(staged))
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREPROCESSING_KEY, metadata_text(spec)
        onnx.save(proto, str(staged))
        atomic_write(path, lambda tmp: os.replace(staged, tmp))


def export_detection_torchscript(
    network: nn.Module, example: Tensor, path: Path, opset: int | None, spec: dict[str, Any]
) -> None:
    """Write ``network`` (a `DetectionExport` of a head without ``export_limit``) to ``path`` as TorchScript
    stating ``spec``, atomically; ``opset`` is not used.

    Traced without ``torch.jit.trace``'s check, which traces the whole model a second time to compare the
    graphs (seconds, for the post-processing); what matters, outputs equal to the eager model's, is tested.

    Examples:
        >>> export_detection_torchscript(network, x, Path("boxes.ts"), None, spec)  # doctest: +SKIP
    """
    module = torch.jit.trace(network, example, check_trace=False)
    atomic_write(path, lambda tmp: torch.jit.save(module, tmp, _extra_files=extra_files(spec)))
