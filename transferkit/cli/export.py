"""``transferkit export``: a run folder (or ``hf-hub:org/name``) to ONNX, ``torch.export`` or TorchScript.

A detection run's file holds the decoding and NMS and gives fixed-size outputs, which the command states
after the input (`transferkit.io.export_detection`).

An existing ``--out`` file is replaced only with ``--overwrite``, and then whole (the export is written
atomically); a symbolic link there is always refused, so the export never writes the file a link points
to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import refuse_symlink
from ..io.export import EXPORT_FORMATS
from ..io.export_detection import describe_outputs
from ..io.export_spec import describe_preprocessing, read_preprocessing
from .options import _positive_int
from .runs import _load_run, _say


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to ``commands``."""
    export = commands.add_parser(
        "export", help="write a trained model as ONNX (.onnx), torch.export (.pt2) or TorchScript (.ts)"
    )
    export.add_argument("--model", required=True, help="a run folder, or hf-hub:org/name")
    export.add_argument("--out", required=True, help=f"the file to write: {', '.join(EXPORT_FORMATS)}")
    export.add_argument(
        "--image-size", type=_positive_int, default=None, help="square input side (default: the model's)"
    )
    export.add_argument(
        "--normalize-in-graph",
        action="store_true",
        help="put the mean/std normalisation inside the file (its input is then the image scaled to [0, 1])",
    )
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.set_defaults(func=_cmd_export)


def _check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a link or a folder, or that exists without ``overwrite``.

    Raises:
        FileExistsError: ``out`` is a symbolic link, or exists and ``overwrite`` is False.
        IsADirectoryError: ``out`` is a folder.
    """
    refuse_symlink(out, "--out file")
    if out.is_dir():
        raise IsADirectoryError(
            f"--out {out} is a folder; name the file to write, such as {out / 'model.pt2'}"
        )
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it, or choose another --out")


def _cmd_export(args: argparse.Namespace) -> int:
    _check_out(Path(args.out), overwrite=args.overwrite)  # before the model loads: a refusal is instant
    model, _ = _load_run(args.model)
    size = args.image_size
    out = model.export(
        Path(args.out), input_size=(size, size) if size else None, normalize_in_graph=args.normalize_in_graph
    )
    spec = read_preprocessing(out)  # what the file itself states
    _say(f"wrote {out}: {EXPORT_FORMATS[out.suffix.lower()]}; its input: {describe_preprocessing(spec)}")
    if "outputs" in spec:  # a detection file: boxes, scores, labels and a count
        _say(f"its outputs: {describe_outputs(spec)}")
    return 0
