"""``transferkit lr-find``: the learning-rate range test on a dataset folder, before ``train``.

It builds the model and the training loader exactly as ``transferkit train`` would with the same
options (backbone, head, pretrained weights, ``--freeze``, batch size, image size, augmentation),
sweeps the head's learning rate (`transferkit.training.lr_find`), prints the suggestion and draws the
loss against the rate. Nothing is saved but the plot: the model is thrown away afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import build_model
from ..tasks import get_task
from ..training import Trainer
from .data_kind import head_for_data
from .options import (
    FREEZE_GRAMMAR,
    _add_device,
    _positive_float,
    _positive_int,
    parse_freeze,
    parse_pretrained,
)
from .runs import _existing_dir, _say
from .train import _data_classes, _folder_loaders, _head_task


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``lr-find`` subcommand to ``commands``."""
    find = commands.add_parser("lr-find", help="suggest a learning rate for train (range test)")
    find.add_argument("--data", required=True, help="root/train/<class>/*.jpg, as for train")
    find.add_argument("--backbone", required=True, help="e.g. resnet18, timm/convnext_tiny")
    find.add_argument("--neck", default="identity", help="default identity")
    find.add_argument("--head", default="linear", help="default linear")
    find.add_argument(
        "--pretrained", type=parse_pretrained, default=True, help="true, false, a tag or a file"
    )
    find.add_argument(
        "--freeze", type=parse_freeze, default=parse_freeze("auto"), help=f"{FREEZE_GRAMMAR} (default auto)"
    )
    find.add_argument("--batch-size", type=_positive_int, default=32)
    find.add_argument("--image-size", type=_positive_int, default=None, help="default: the backbone's size")
    find.add_argument("--steps", type=_positive_int, default=100, help="optimizer steps (default 100)")
    find.add_argument("--start-lr", type=_positive_float, default=1e-6)
    find.add_argument("--end-lr", type=_positive_float, default=1.0)
    find.add_argument("--seed", type=int, default=0)
    find.add_argument("--plot", default="lr_find.png", help="where the plot goes (default lr_find.png)")
    _add_device(find)
    find.set_defaults(func=_cmd_lr_find, augment="light", mixup=0.0, cutmix=0.0)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    data = _existing_dir(args.data, "--data")
    head_for_data(args.data, args.head, "transferkit lr-find")  # refuses a head that misreads the folder
    task = get_task(_head_task(args.head))
    classes = _data_classes(data, task, args)
    torch.manual_seed(args.seed)
    model = build_model(
        args.backbone,
        neck=args.neck,
        head=args.head,
        num_classes=len(classes),
        pretrained=args.pretrained,
        classes=classes,
    )
    loaders = _folder_loaders(data, task, model, args)
    args.freeze.apply(model, loaders["train"])
    trainer = Trainer(model, device=args.device, progress=False, seed=args.seed)
    result = trainer.lr_find(loaders["train"], start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    plot = Path(args.plot)
    result.plot(plot)
    _say(
        f"transferkit lr-find: {model.config['backbone']}, freeze {args.freeze.text} "
        f"({len(model.trainable_blocks)} of {len(model.blocks)} backbone blocks train), "
        f"{len(result.lrs)} steps from {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}",
        f"suggested learning rate: {result.suggestion:.2g} (transferkit train --lr {result.suggestion:.2g})",
        f"plot: {plot}",
    )
    return 0
