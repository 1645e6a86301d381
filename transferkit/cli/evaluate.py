"""``transferkit eval``: loss and metrics of a trained run folder on one split of a dataset folder.

`evaluate_folder` reads the split the way the model's task reads it, with the model's evaluation
transforms and its class order, so its accuracy agrees exactly with what ``predict`` says per image.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, cast

from torch.utils.data import DataLoader

from ..atomic import write_text
from ..data.check import check_dataset_files
from ..interpret import (
    ClassificationInterpretation,
    DetectionInterpretation,
    SegmentationInterpretation,
    interpret,
)
from ..models.model import TransferModel
from ..tasks import get_task
from ..training import Trainer
from .options import _add_device, _positive_int
from .runs import _existing_dir, _load_run, _say


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to ``commands``."""
    evaluate = commands.add_parser("eval", help="loss and accuracy (or mIoU) of a trained model on a folder")
    evaluate.add_argument("--model", required=True, help="a run folder written by transferkit train")
    evaluate.add_argument("--data", required=True, help="a dataset root (its val/ is used) or a split folder")
    evaluate.add_argument("--split", default=None, help="the split folder under --data (default val)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32)
    evaluate.add_argument(
        "--errors",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="write each misclassified image (path, true, predicted, probability) to this CSV",
    )
    _add_device(evaluate)
    evaluate.set_defaults(func=_cmd_eval)


def _eval_split(data: Path, split: str | None) -> Path:
    """``data/<split>`` (default ``val``); a folder without a train/ subfolder may be the split itself."""
    if (data / (split or "val")).is_dir():
        return data / (split or "val")
    if split is None and not (data / "train").is_dir():
        return data
    if split is None:
        raise FileNotFoundError(f"{data} has no val/ folder; pass --split train to evaluate the train split")
    raise FileNotFoundError(f"{data / split}: no such folder")


def evaluate_folder(
    model: TransferModel,
    meta: dict[str, Any],
    split_dir: Path,
    *,
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[dict[str, float], int]:
    """Loss and metrics of ``model`` on one split folder, with the model's eval transforms and classes.

    Args:
        model: The trained model; ``model.task`` says how the folder is laid out.
        meta: Its run metadata, as ``transferkit.json`` holds it; the class names and the preprocessing
            are the model's own (``model.classes``, ``model.data_config``).
        split_dir: ``<class>/*.jpg`` folders (classification) or ``images/`` + ``masks/`` (segmentation).
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``Trainer.evaluate``'s metrics (``loss``, ``acc``, and ``miou`` for segmentation; ``map`` and
        ``map_50`` for detection) and the image count.

    Raises:
        ValueError: The folder has classes the model does not know.

    Examples:
        >>> evaluate_folder(model, meta, Path("hymenoptera_data/val"))  # doctest: +SKIP
        ({'loss': 0.2011, 'acc': 0.9412}, 153)
    """
    loader = _split_loader(model, split_dir, batch_size)
    return Trainer(model, device=device).evaluate(loader), len(cast(Sized, loader.dataset))


def _split_loader(model: TransferModel, split_dir: Path, batch_size: int) -> DataLoader:
    """The split in file order, with the model's eval transforms and classes, every file checked first."""
    task = get_task(model.task)
    dataset = task.folder_dataset(split_dir, model, model.classes, None)
    check_dataset_files([dataset])  # every damaged file named before evaluating
    return DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate_fn)


def _per_class_lines(interpretation: ClassificationInterpretation) -> list[str]:
    """A table of precision, recall, F1 and support per class, under a header line."""
    rows = interpretation.per_class()
    width = max(len("class"), *(len(r.name) for r in rows))
    head = f"{'class':<{width}}  precision  recall      F1  support"
    lines = [
        f"{r.name:<{width}}  {r.precision:9.4f}  {r.recall:6.4f}  {r.f1:6.4f}  {r.support:7d}" for r in rows
    ]
    return ["", head, *lines]


def _iou_lines(interpretation: SegmentationInterpretation) -> list[str]:
    """A table of each class's IoU over the split ("absent" where neither truth nor prediction has it)."""
    rows = interpretation.per_class_iou()
    width = max(len("class"), *(len(name) for name, _ in rows))
    lines = [f"{name:<{width}}  {'absent' if math.isnan(iou) else f'{iou:6.4f}':>6}" for name, iou in rows]
    return ["", f"{'class':<{width}}     IoU", *lines]


def _ap_lines(interpretation: DetectionInterpretation) -> list[str]:
    """A table of each class's COCO AP, AP@0.5 and true boxes ("-" where the class has no true box)."""
    rows = interpretation.per_class_ap()
    width = max(len("class"), *(len(r.name) for r in rows))

    def value(ap: float) -> str:
        return f"{'-' if math.isnan(ap) else f'{ap:.4f}':>6}"

    lines = [f"{r.name:<{width}}  {value(r.ap)}  {value(r.ap_50)}  {r.true_boxes:5d}" for r in rows]
    return ["", f"{'class':<{width}}      AP  AP@0.5  boxes", *lines]


# The per-class table of each interpretation; --errors lists the misclassified images of a classifier.
_TABLES: dict[type, Callable[[Any], list[str]]] = {
    ClassificationInterpretation: _per_class_lines,
    SegmentationInterpretation: _iou_lines,
    DetectionInterpretation: _ap_lines,
}
_ERRORS_FOR = ("classification",)


def _check_errors_file(path: Path, task: str) -> None:
    """Raise unless ``--errors`` can be written: a classification model, and a folder that exists."""
    if task not in _ERRORS_FOR:
        raise ValueError(f"--errors lists misclassified images of {', '.join(_ERRORS_FOR)} models only")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--errors {path}: the folder {path.parent} does not exist; create it first")


def _write_errors(path: Path, interpretation: ClassificationInterpretation) -> int:
    """Write the misclassified samples to ``path`` as CSV in one atomic rename; return their count."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "true", "predicted", "probability"])
    errors = interpretation.errors()
    writer.writerows([e.path, e.true, e.predicted, repr(e.probability)] for e in errors)
    write_text(path, buffer.getvalue())
    return len(errors)


def _metric_lines(metrics: dict[str, float]) -> list[str]:
    """``label  value`` lines, loss first; with ``miou`` present, ``acc`` is the pixel accuracy."""
    labels = {"loss": "loss", "acc": "accuracy", "miou": "mIoU", "top5": "top-5 accuracy"}
    labels.update(map="mAP@[.5:.95]", map_50="mAP@0.5")  # COCO box mAP (detection)
    order = ["loss", "miou", "acc", "top5", "map", "map_50"]
    keys = [k for k in order if k in metrics] + [k for k in metrics if k not in order]
    label_of = {k: labels.get(k, k) for k in keys}
    if "miou" in metrics:
        label_of["acc"] = "pixel accuracy"
    width = max(len(v) for v in label_of.values())
    return [f"{label_of[k]:<{width}}  {metrics[k]:.4f}" for k in keys]


def _cmd_eval(args: argparse.Namespace) -> int:
    model, _ = _load_run(args.model)
    split_dir = _eval_split(_existing_dir(args.data, "--data"), args.split)
    if args.errors is not None:  # refused before the passes, not after them
        _check_errors_file(args.errors, model.task)
    loader = _split_loader(model, split_dir, args.batch_size)
    trainer = Trainer(model, device=args.device)
    lines = _metric_lines(trainer.evaluate(loader))
    # a second pass, keeping per-sample scalars (never logits, masks or boxes) and the per-class table
    interpretation = interpret(model, loader, device=args.device, progress=trainer.show_progress)
    table = _TABLES.get(type(interpretation))  # a task added to INTERPRETERS may have no table here
    lines += table(interpretation) if table is not None else []
    if isinstance(interpretation, ClassificationInterpretation) and args.errors is not None:
        written = _write_errors(args.errors, interpretation)
        lines.append(f"{written} misclassified images written to {args.errors}")
    count = len(cast(Sized, loader.dataset))
    _say(f"{split_dir}: {count} images, {len(model.classes)} classes", *lines)
    return 0
