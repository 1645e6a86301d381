"""``transferkit report RUN``: write the run's self-contained ``report.html`` (`transferkit.cli.run_report`).

It reads the run folder (the model, ``transferkit.json``, ``history.json`` and its pictures) and the
validation split of the dataset the run trained on (``--data`` for another place), and runs the model
once over that split for the interpretation. ``transferkit train`` writes the same report at the end of
every run that has a validation split.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

from ..tasks import get_task
from ..training.progress import bar_renders
from .evaluate import _split_loader
from .folder import HISTORY_FILE
from .options import UsageError, _add_device
from .run_report import REPORT_FILE, write_run_report
from .runs import _existing_dir, _load_run, _say


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to ``commands``."""
    report = commands.add_parser("report", help="write a run folder's self-contained report.html")
    report.add_argument("run", metavar="RUN", help="a run folder written by transferkit train")
    report.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="the dataset root (its val/ is read; default: the data the run trained on)",
    )
    report.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help=f"the HTML file (default RUN/{REPORT_FILE})"
    )
    report.add_argument(
        "--cam",
        action="store_true",
        help="add the top losses' class-activation maps (a classifier; needs transferkit[gradcam])",
    )
    _add_device(report)
    report.set_defaults(func=_cmd_report)


def _history(folder: Path) -> list[dict[str, Any]]:
    path = folder / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {HISTORY_FILE}: it is not a finished run of transferkit train"
        )
    try:
        history = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}); train the run again") from None
    if (
        not isinstance(history, list)
        or not history
        or not all(isinstance(r, dict) and "epoch" in r for r in history)
    ):
        raise ValueError(f"{path} is not a history transferkit wrote (a list of epochs); train the run again")
    return history


def _data_root(args: argparse.Namespace, meta: dict[str, Any]) -> Path:
    if args.data is not None:
        return _existing_dir(args.data, "--data")
    if not meta.get("data"):
        raise UsageError("transferkit report", f"{args.run} does not record its data folder; pass --data DIR")
    data = Path(meta["data"])
    if not data.is_dir():
        raise FileNotFoundError(
            f"the run's data folder {data} (from its transferkit.json) does not exist; pass --data DIR"
        )
    return data


def _train_images(model: Any, data: Path) -> int | None:
    """How many images the run's train split holds (for images per second), or None without one."""
    if not (data / "train").is_dir():
        return None
    dataset = get_task(model.task).folder_dataset(data / "train", model, model.classes, None)
    return len(cast(Sized, dataset))


def _cmd_report(args: argparse.Namespace) -> int:
    folder = _existing_dir(args.run, "RUN")
    history = _history(folder)  # before the model loads: the cheap refusal first
    model, meta = _load_run(str(folder))
    if args.cam and model.task != "classification":  # the maps explain a class score
        raise UsageError("transferkit report", f"--cam draws a classifier's activation maps; {args.run} "
                         f"holds a {model.task} model: leave --cam out")  # fmt: skip
    data = _data_root(args, meta)
    if not (data / "val").is_dir():
        raise FileNotFoundError(
            f"{data} has no val/ split; the report reads the validation images (pass --data DIR with a val/)"
        )
    if args.out is not None and not args.out.parent.is_dir():
        raise FileNotFoundError(
            f"--out {args.out}: the folder {args.out.parent} does not exist; create it first"
        )
    loader = _split_loader(model, data / "val", int(meta.get("batch_size") or 32))
    written = write_run_report(
        folder, model, meta, history, loader, out=args.out, train_images=_train_images(model, data),
        device=args.device, progress=bar_renders(), cam=args.cam,
    )  # fmt: skip
    _say(f"report: {written}")
    return 0
