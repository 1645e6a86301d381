"""``transferkit train``: fine-tune a backbone on a dataset folder and write a run folder.

The head's declared task picks how the folder is read (class folders, or images plus masks); the class
names are read before the model is built, so a bad layout fails before any weights load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .. import PretrainedUnavailableError, __version__, build_model
from ..heads import HEADS
from ..model import TransferModel
from ..tasks import IGNORE_INDEX, Task, get_task
from .options import (
    FREEZE_GRAMMAR,
    _add_device,
    _positive_float,
    _positive_int,
    parse_freeze,
    parse_pretrained,
)
from .runs import (
    HISTORY_FILE,
    META_FILE,
    _describe_data,
    _existing_dir,
    _fit_and_save,
    _say,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to ``commands``."""
    train = commands.add_parser("train", help="fine-tune a backbone on an image folder")
    train.add_argument(
        "--data", required=True, help="root/train/<class>/*.jpg (+ root/val/...); masks for fcn"
    )
    train.add_argument(
        "--backbone", required=True, help="e.g. resnet18, timm/convnext_tiny (transferkit list)"
    )
    train.add_argument("--neck", default="identity", help="identity (default) or fpn_lite")
    train.add_argument(
        "--head", default="linear", help="linear (classification, default) or fcn (segmentation)"
    )
    train.add_argument(
        "--pretrained",
        type=parse_pretrained,
        default=True,
        help="true (default), false, a weights tag or a file",
    )
    train.add_argument(
        "--freeze", type=parse_freeze, default=parse_freeze("none"), help=f"{FREEZE_GRAMMAR} (default: none)"
    )
    train.add_argument("--epochs", type=_positive_int, default=10)
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="head learning rate (default 1e-3)")
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--image-size", type=_positive_int, default=None, help="default: the backbone's size")
    train.add_argument("--out", default="runs/transferkit", help="run folder (default runs/transferkit)")
    train.add_argument("--seed", type=int, default=0)
    _add_device(train)
    train.set_defaults(func=_cmd_train)


def _head_task(head: str) -> str:
    """The task a registered head declares; unknown names raise with the closest matches."""
    # A head without a ``task`` attribute is a classifier, as ``TransferModel.task`` reads it too.
    return getattr(HEADS.get(head), "task", "classification")


def _mask_classes(masks: list[Path]) -> list[str]:
    """Names ``0..K-1`` for a segmentation set without ``classes.txt``; K from the largest mask index."""
    largest = 0
    for path in masks:
        with Image.open(path) as mask:
            values = np.unique(np.asarray(mask))
        values = values[values != IGNORE_INDEX]
        largest = max(largest, int(values.max()) if values.size else 0)
    return [str(i) for i in range(largest + 1)]


def _data_classes(data: Path, task: Task, args: argparse.Namespace) -> list[str]:
    """Class names of a dataset folder, read before the model is built so a bad layout fails at once.

    A folder that names no classes (a segmentation set without ``classes.txt``) gets them from its masks.
    """
    train = _folder_loaders(data, task, None, args)["train"].dataset
    if train.classes is not None:
        return list(train.classes)
    return _mask_classes([mask for _, mask in train.samples])


def _folder_loaders(
    data: Path, task: Task, model: TransferModel | None, args: argparse.Namespace
) -> dict[str, DataLoader]:
    """The task's loaders for ``--data``; without a model (ImageNet transforms) only to read the classes."""
    return task.folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, seed=args.seed
    )


def _image_size_text(model: TransferModel, image_size: int | None) -> str:
    size = image_size or model.data_config["input_size"][-1]
    return f"{size}px"


def _cmd_train(args: argparse.Namespace) -> int:
    data = _existing_dir(args.data, "--data")
    task = get_task(_head_task(args.head))
    classes = _data_classes(data, task, args)
    torch.manual_seed(args.seed)
    try:
        model = build_model(
            args.backbone,
            neck=args.neck,
            head=args.head,
            num_classes=len(classes),
            pretrained=args.pretrained,
        )
    except PretrainedUnavailableError as err:
        raise PretrainedUnavailableError(
            f"{err} On the command line: --pretrained PATH or --pretrained false."
        ) from err
    args.freeze.apply(model)
    loaders = _folder_loaders(data, task, model, args)
    _say(
        f"transferkit train: {model.config['backbone']} + {args.neck} neck + {args.head} head ({task.name}), "
        f"pretrained={args.pretrained}, {_image_size_text(model, args.image_size)}",
        f"data: {data}: {_describe_data(loaders, classes)}",
        f"freeze: {args.freeze.text} ({len(model.trainable_blocks)} of {len(model.blocks)} backbone blocks "
        "train at the start)",
        model.freeze_summary(),
    )
    meta = {
        "task": task.name,
        "classes": list(classes),
        "image_size": args.image_size,
        "data": str(data.resolve()),
        "freeze": args.freeze.text,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "transferkit_version": __version__,
    }
    out = Path(args.out)
    _, plots = _fit_and_save(
        model, loaders, out, meta=meta, epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed
    )
    files = ["config.json", "model.safetensors", META_FILE, HISTORY_FILE, *(p.name for p in plots)]
    _say(f"saved to {out}/: {', '.join(files)}")
    return 0
