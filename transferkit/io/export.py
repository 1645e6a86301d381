"""Exporting a model for deployment: ONNX, a ``torch.export`` program, or TorchScript, by file suffix.

Each format is PyTorch's own exporter; this module only picks it from the suffix, gives it an example
input of the model's preprocessing size, keeps the batch dimension dynamic, and turns an exporter's
failure into an error that says which format failed and what else to try. The model is exported in
eval mode (its train/eval mode is restored afterwards) and on its own device.

The file is written atomically (`transferkit.atomic`): exported into a temporary sibling and renamed,
so a failed or killed export leaves the earlier file whole, and a symbolic link at the path is refused.
An ONNX model with over 1.5 GB of weights keeps them in ``NAME.onnx.data`` beside it, which the model
file names; both are exported under their final names into a temporary folder beside the target and
renamed into place, the data file first.

A detection model's file holds its decoding and NMS too and gives fixed-size outputs (``boxes``,
``scores``, ``labels``, ``count``); `transferkit.io.export_detection` says which heads export to which
formats, and when the batch size is fixed.

Examples:
    >>> model = build_model("resnet18", num_classes=2, pretrained=False)
    >>> export(model, "model.onnx", input_size=(64, 64))  # doctest: +SKIP
    PosixPath('model.onnx')
    >>> program = torch.export.load("model.pt2")  # after export(model, "model.pt2")  # doctest: +SKIP
    >>> program.module()(torch.randn(3, 3, 224, 224)).shape  # doctest: +SKIP
    torch.Size([3, 2])
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import atomic_write, refuse_symlink
from ..errors import ExportError
from ..tasks import get_task
from .export_detection import (
    DetectionExport,
    check_detection_format,
    detection_formats,
    detection_spec,
    export_detection_onnx,
    export_detection_torchscript,
)
from .export_spec import PREPROCESSING_KEY, extra_files, metadata_text, preprocessing_spec

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["EXPORT_FORMATS", "ExportError", "export"]

EXPORT_FORMATS = {".onnx": "ONNX (torch.onnx)", ".pt2": "torch.export program", ".ts": "TorchScript"}
_MAX_BATCH = 4096
Spec = dict[str, Any]  # `transferkit.io.export_spec.preprocessing_spec`
Exporter = Callable[[torch.nn.Module, torch.Tensor, Path, int | None, Spec], None]  # one of _EXPORTERS


def export(
    model: TransferModel,
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int] | None = None,
    opset: int | None = None,
    normalize_in_graph: bool = False,
) -> Path:
    """Writes ``model`` to ``path`` in the format its suffix names; the batch size stays dynamic (but for
    torchvision's detection heads: `transferkit.io.export_detection`).

    Args:
        model: The model to export.
        path: ``*.onnx`` (run it with onnxruntime), ``*.pt2`` (``torch.export.load``) or ``*.ts``
            (``torch.jit.load``; PyTorch deprecates TorchScript in favour of ``.pt2``). Parent folders
            are created; an existing file is replaced whole (atomically), a symbolic link is refused.
        input_size: ``(H, W)`` of the example input; default the model's ``data_config`` input size.
            ONNX and ``.pt2`` files take only this size; TorchScript follows the traced sizes.
        opset: ONNX opset version (default: the exporter's).
        normalize_in_graph: Put the normalisation (``data_config``'s mean and std) inside the file, whose
            input is then the image scaled to [0, 1].

    The file states its preprocessing (`transferkit.io.export_spec.preprocessing_spec`: colour, resize, centre
    crop, scaling, normalisation, input shape) in its metadata: ONNX ``metadata_props`` under
    ``"transferkit.preprocessing"``, or the ``extra_files`` of ``.pt2`` and TorchScript files;
    `transferkit.io.export_spec.read_preprocessing` reads it back.

    Returns:
        ``path``.

    Raises:
        ValueError: An unknown suffix.
        FileExistsError: ``path`` (or the ONNX data file beside it) is a symbolic link; nothing is written.
        ExportError: The model's head cannot be exported to this format (torchvision's detection heads
            export to ONNX only), or the exporter failed for this model (the message says which and what
            to try). Nothing is written.

    Examples:
        >>> path = export(model, "runs/ab/model.onnx", input_size=(224, 224))  # doctest: +SKIP
        >>> import onnxruntime  # doctest: +SKIP
        >>> session = onnxruntime.InferenceSession(str(path))  # doctest: +SKIP
        >>> session.run(None, {"x": images.numpy()})[0].shape  # images [3, 3, 224, 224]  # doctest: +SKIP
        (3, 2)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(
            f"cannot export to {path}: unknown suffix {path.suffix!r}; use one of {sorted(EXPORT_FORMATS)} "
            f"({', '.join(EXPORT_FORMATS.values())})"
        )
    was_training = model.training  # before a wrapper's eval() reaches the model
    detections = get_task(model.task).export_post_processing
    if detections:
        check_detection_format(model, path)
    refuse_symlink(path, "export file")
    if suffix == ".onnx":
        refuse_symlink(_onnx_data(path), "export file")
    height, width = tuple(input_size) if input_size is not None else model.data_config["input_size"][-2:]
    spec = preprocessing_spec(model, (height, width), normalize_in_graph=normalize_in_graph)
    exporter: Exporter = _EXPORTERS[suffix]
    formats = tuple(EXPORT_FORMATS)
    network: torch.nn.Module = model
    if detections:  # the post-processing goes into the file too (`transferkit.io.export_detection`)
        spec, formats = detection_spec(model, spec), detection_formats(model)
        stats = (spec["mean"], spec["std"]) if normalize_in_graph else (None, None)
        network = DetectionExport(model, (height, width), *stats).eval()
        exporter = {".onnx": export_detection_onnx, ".ts": export_detection_torchscript}.get(suffix, exporter)
    elif normalize_in_graph:
        network = _Normalized(model, spec["mean"], spec["std"]).eval()
    device = next(model.parameters()).device
    network.to(device)  # a wrapper's mean and std buffers
    batch = spec["input"]["shape"][0]  # "N", or the batch size a file takes
    example = torch.randn(
        2 if batch == "N" else batch, model.config.get("in_chans", 3), height, width, device=device
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The backbone's input checks read tensor sizes in Python; tracing notes each one as a constant.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # PyTorch marks TorchScript deprecated (in favour of .pt2); the user asked for .ts by name.
            warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
            # torchvision's shape function for NMS calls torch by a deprecated name: nothing for a user to do
            warnings.filterwarnings("ignore", category=FutureWarning, message="`create_unbacked_symint`")
            exporter(network, example, path, opset, spec)
    except ImportError as err:
        raise ImportError(
            f'exporting to {suffix} needs {err.name or "onnx"}: pip install "transferkit[export]" '
            '(onnx, onnxscript, onnxruntime), or pip install -e ".[export]" in a source checkout'
        ) from err
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        others = ", ".join(s for s in formats if s != suffix)
        raise ExportError(
            f"{EXPORT_FORMATS[suffix]} export of {model.config.get('backbone', type(model).__name__)} to "
            f"{path} failed: {type(err).__name__}: {_first_line(err)}."
            + (f" Try another format ({others})." if others else "")
        ) from err
    finally:
        model.train(was_training)
    return path


class _Normalized(torch.nn.Module):
    """``model`` behind its normalisation: takes images scaled to [0, 1]."""

    mean: torch.Tensor  # buffers [1, C, 1, 1]
    std: torch.Tensor

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _batch_dim() -> dict[int, torch.export.Dim]:
    return {0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)}


def _onnx_data(path: Path) -> Path:
    """Where torch.onnx puts the weights of a model over its size limit: ``NAME.onnx.data``."""
    return path.with_name(path.name + ".data")


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None, spec: Spec) -> None:
    import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; fail early with the install hint)

    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=(_batch_dim(),),
        input_names=["x"],
        output_names=["logits"],
        opset_version=opset,
        verbose=False,
    )
    assert program is not None, "torch.onnx.export(dynamo=True) returns the program"
    program.model.metadata_props[PREPROCESSING_KEY] = metadata_text(spec)
    # The model file names its data file by the name it is saved under, so it is saved under its own
    # name in a folder beside ``path`` (same file system: the renames stay renames).
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as folder:
        staged = Path(folder) / path.name
        program.save(str(staged))
        if _onnx_data(staged).exists():
            atomic_write(_onnx_data(path), lambda tmp: os.replace(_onnx_data(staged), tmp))
        atomic_write(path, lambda tmp: os.replace(staged, tmp))


def _program(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None, spec: Spec
) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=(_batch_dim(),))

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: torch.export.save wants a path to end in .pt2
            torch.export.save(program, f, extra_files=extra_files(spec))

    atomic_write(path, save)


def _torchscript(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None, spec: Spec
) -> None:
    module = torch.jit.trace(model, example)
    atomic_write(path, lambda tmp: torch.jit.save(module, tmp, _extra_files=extra_files(spec)))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else "no message"


_EXPORTERS = {".onnx": _onnx, ".pt2": _program, ".ts": _torchscript}
