"""``transferkit eval``: loss and metrics of a trained run folder on one split of a dataset folder.

`evaluate_folder` reads the split the way the model's task reads it, with the model's evaluation
transforms and its class order, so its accuracy agrees exactly with what ``predict`` says per image.
"""

from __future__ import annotations

import argparse
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

from torch.utils.data import DataLoader

from ..data.check import check_dataset_files
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
    task = get_task(model.task)
    dataset = task.folder_dataset(split_dir, model, model.classes, None)
    check_dataset_files([dataset])  # every damaged file named before evaluating
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate_fn)
    return Trainer(model, device=device).evaluate(loader), len(cast(Sized, dataset))


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
    model, meta = _load_run(args.model)
    split_dir = _eval_split(_existing_dir(args.data, "--data"), args.split)
    metrics, count = evaluate_folder(model, meta, split_dir, batch_size=args.batch_size, device=args.device)
    _say(f"{split_dir}: {count} images, {len(model.classes)} classes", *_metric_lines(metrics))
    return 0
