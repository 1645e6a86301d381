"""``transferkit export``: a run folder (or ``hf-hub:org/name``) to ONNX, ``torch.export`` or TorchScript."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import EXPORT_FORMATS
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
        "--image-size", type=_positive_int, default=None, help="square input side (default: the run's)"
    )
    export.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    model, meta = _load_run(args.model)
    size = args.image_size or meta.get("image_size")
    out = model.export(Path(args.out), input_size=(size, size) if size else None)
    height, width = (size, size) if size else model.data_config["input_size"][-2:]
    fmt, data = EXPORT_FORMATS[out.suffix.lower()], model.data_config
    _say(
        f"wrote {out}: {fmt}, input x [N, {model.config.get('in_chans', 3)}, {height}, {width}] (any N), "
        f"normalised with mean {list(data['mean'])} and std {list(data['std'])}"
    )
    return 0
