"""``transferkit train``: fine-tune a backbone on a dataset folder and write a run folder.

The head's declared task picks how the folder is read (class folders, or images plus masks); the class
names are read before the model is built, so a bad layout fails before any weights load.

``--out`` is locked for the whole command (`transferkit.cli.lock`), taken before it is checked, so two
commands never share a folder. Nothing is written or deleted there until every argument is checked:
the Trainer, which checks its own, is built before ``transferkit.json`` is written and before
``--overwrite`` removes the earlier run. A new run that fails before its first checkpoint (bad data
found in epoch 1, a full disk) removes what it wrote (`transferkit.cli.resume.discard_unstarted_run`):
it has nothing to resume, and its ``transferkit.json`` alone would make the corrected command refuse
the folder. Ctrl-C keeps the run for ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from .. import PretrainedUnavailableError, __version__, build_model
from ..models.heads import HEADS
from ..models.model import TransferModel
from ..tasks import IGNORE_INDEX, Task, get_task
from ..training import MLflowLogger, Trainer
from ..training.recipe import uses_default_recipe
from .data_kind import head_for_data
from .folder import HISTORY_CSV, HISTORY_FILE, refuse_linked_entries, remove_entries
from .lock import locked_run_folder
from .meta import META_FILE
from .options import (
    CROP_SCALE_GRAMMAR,
    FREEZE_GRAMMAR,
    UsageError,
    _add_device,
    _non_negative_float,
    _positive_float,
    _positive_int,
    parse_crop_scale,
    parse_freeze,
    parse_pretrained,
)
from .resume import (
    TRAIN_DEFAULTS,
    check_new_run,
    discard_unstarted_run,
    has_checkpoint,
    new_run_arguments,
    no_run_to_resume,
    resumed_arguments,
)
from .run_report import REPORT_FILE
from .runs import (
    Interrupted,
    _count,
    _describe_data,
    _existing_dir,
    _fit_and_save,
    _read_meta,
    _resume_command,
    _say,
    _trainer,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to ``commands``."""
    train = commands.add_parser("train", help="fine-tune a backbone on an image folder")
    train.add_argument("--data", help="root/train/<class>/*.jpg (+ root/val/...); masks for fcn")
    train.add_argument("--backbone", help="e.g. resnet18, timm/convnext_tiny (transferkit list)")
    train.add_argument(
        "--neck", help="identity (default; fpn_lite for detection heads), fpn_lite, pan, aspp, simple_pyramid"
    )
    train.add_argument(
        "--head",
        help="linear (classification), fcn (segmentation), yolo/fcos/retinanet/... (detection); default: "
        "from --data's layout (linear; fcn for images + masks; yolo for images + annotations)",
    )
    train.add_argument(
        "--pretrained", type=parse_pretrained, help="true (default), false, a weights tag or a file"
    )
    train.add_argument(
        "--freeze",
        type=parse_freeze,
        help=f"{FREEZE_GRAMMAR} (default auto: a pretrained classifier is probed, then its top blocks tuned)",
    )
    train.add_argument("--epochs", type=_positive_int, help="default 10")
    train.add_argument(
        "--lr",
        type=_positive_float,
        help="head learning rate (default 1e-3; under --freeze auto, of the fine-tune phase after the probe, "
        "3e-3 by default from 100 images per class or on data far from ImageNet, the head then at 3e-4)",
    )
    train.add_argument("--batch-size", type=_positive_int, help="default 32")
    train.add_argument("--image-size", type=_positive_int, help="default: the backbone's size")
    train.add_argument("--out", default="runs/transferkit", help="run folder (default runs/transferkit)")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument(
        "--augment",
        help="light (default: a random crop; flipped with --flip), none, or randaugment, trivialaugment, "
        "autoaugment, randomerasing on top of light, joined with + (segmentation and detection: light or "
        "none)",
    )
    flips = train.add_mutually_exclusive_group()
    flips.add_argument(
        "--flip",
        dest="flip",
        action="store_const",
        const=True,
        help="random horizontal flips, for photos whose mirror image is the same class (the default for "
        "segmentation and detection, not for classification: a flipped digit is another digit)",
    )
    flips.add_argument(
        "--no-flip",
        dest="flip",
        action="store_const",
        const=False,
        help="no random horizontal flips (the classification default; segmentation and detection flip)",
    )
    train.add_argument(
        "--crop-scale",
        type=parse_crop_scale,
        help=f"area range of the random crop: {CROP_SCALE_GRAMMAR} "
        "(default 0.7 for classification, 0.5 for segmentation; not for detection, whose crop follows its "
        "scale jitter)",
    )
    train.add_argument(
        "--mixup", type=_non_negative_float, help="MixUp alpha (classification; default 0: off)"
    )
    train.add_argument(
        "--cutmix", type=_non_negative_float, help="CutMix alpha (classification; default 0: off)"
    )
    train.add_argument("--label-smoothing", type=_non_negative_float, help="default 0")
    train.add_argument(
        "--log",
        choices=("csv", "tensorboard", "mlflow"),
        help="csv: history.csv (default); tensorboard: also tb/ events; mlflow: also an MLflow run in "
        "mlruns/ (or in $MLFLOW_TRACKING_URI) with the params, metrics, model and run files",
    )
    existing = train.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in --out (its options are saved)"
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (refused if the folder holds anything a run does not write)",
    )
    _add_device(train)
    train.set_defaults(func=_cmd_train)


def _log_to_mlflow(trainer: Trainer, files: list[Path]) -> str:
    """Adds a finished run's ``files`` to its MLflow run, which holds the model folder already; says where."""
    logger = next(cb for cb in trainer.callbacks.callbacks if isinstance(cb, MLflowLogger))
    for path in files:
        logger.log_artifact(path)
    return f"MLflow run {logger.run_id} in {logger.tracking_uri}"


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
    train: Any = _folder_loaders(data, task, None, args)["train"].dataset  # a folder dataset
    if train.classes is not None:
        return list(train.classes)
    return _mask_classes([mask for _, mask in train.samples])


def _folder_loaders(
    data: Path, task: Task, model: TransferModel | None, args: argparse.Namespace
) -> dict[str, DataLoader]:
    """The task's loaders for ``--data``; without a model (ImageNet transforms) only to read the classes.

    Raises:
        UsageError: An option the task's loaders do not take (``--crop-scale`` for detection).
    """
    # given to the loaders only when changed
    options = {"augment": "light", "mixup": 0.0, "cutmix": 0.0, "flip": None, "crop_scale": None}
    changed = {k: getattr(args, k) for k, v in options.items() if getattr(args, k, v) not in (None, v)}
    if "crop_scale" in changed:
        changed["crop_scale"] = tuple(changed["crop_scale"])
    try:
        return task.folder_loaders(
            data, model, batch_size=args.batch_size, image_size=args.image_size, seed=args.seed, **changed
        )
    except TypeError as err:
        refused = [k for k in changed if f"unexpected keyword argument '{k}'" in str(err)]
        if not refused:
            raise
        flag = "--" + refused[0].replace("_", "-")
        raise UsageError(
            "transferkit train",
            f"{flag} does not apply to {task.name}; drop it (see transferkit train --help)",
        ) from None


def _freeze_text(model: TransferModel, text: str) -> str:
    """The ``freeze:`` line: what trains at the start, or that the recipe decides when training starts."""
    if text == "auto" and uses_default_recipe(model):
        return "freeze: auto (the recipe decides when training starts: a probe, then the top blocks)"
    blocks = f"{len(model.trainable_blocks)} of {len(model.blocks)}"
    return f"freeze: {text} ({blocks} backbone blocks train at the start)"


def _image_size_text(model: TransferModel, image_size: int | None) -> str:
    size = image_size or model.data_config["input_size"][-1]
    return f"{size}px"


def _new_run_values(args: argparse.Namespace) -> dict[str, Any]:
    """A new run's options (the given ones, and the defaults of the rest) as ``transferkit.json`` keeps them.

    Without ``--head``, a segmentation or detection folder trains that task's default head (and says so);
    a ``--head`` of another task than the folder's layout is refused (`transferkit.cli.data_kind`).

    Raises:
        UsageError: ``--data`` or ``--backbone`` is missing, or ``--head`` does not read ``--data``.
    """
    values = new_run_arguments(args)
    values["head"], note = head_for_data(values["data"], args.head)  # the head must read the folder
    if note:
        _say(f"transferkit train: {note}")
    if args.neck is None:  # the head's task picks the neck: detection heads read a pyramid
        values["neck"] = get_task(_head_task(values["head"])).default_neck
    return values


def _run_arguments(
    args: argparse.Namespace, values: dict[str, Any] | None
) -> tuple[argparse.Namespace | None, list[Path]]:
    """The run's options, and what of an earlier run in ``--out`` it replaces; run with the lock held.

    With ``--resume`` the options are the saved ones (None when that run is done); a new run's are
    ``values``, once ``--out`` is known to take it (empty, or a run that ``--overwrite`` may replace).
    """
    out = Path(args.out)
    replaced: list[Path] = []
    if args.resume:
        values = resumed_arguments(out, args)
        if _read_meta(out).get("status") == "done":
            _say(f"{out} finished all {_count(values['epochs'], 'epoch')} already; nothing to resume")
            return None, []
    else:
        assert values is not None, "a new run's values are read before the lock"
        replaced = check_new_run(out, overwrite=args.overwrite)
    refuse_linked_entries(out)
    run = argparse.Namespace(**values)
    run.freeze = parse_freeze(run.freeze)
    run.out, run.device, run.resume = out, args.device, args.resume
    return run, replaced


def _cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    values = None if args.resume else _new_run_values(args)  # usage errors before --out is touched
    if args.resume and not out.is_dir():
        raise no_run_to_resume(out)
    with locked_run_folder(out, command="transferkit train"):
        run, replaced = _run_arguments(args, values)
        return 0 if run is None else _train(run, replaced)


def _train(run: argparse.Namespace, replaced: list[Path]) -> int:
    """Build the model, loaders and Trainer, then replace ``replaced`` (``--overwrite``) and train."""
    data = _existing_dir(run.data, "--data")
    task = get_task(_head_task(run.head))
    classes = _data_classes(data, task, run)
    torch.manual_seed(run.seed)
    try:
        model = build_model(
            run.backbone,
            neck=run.neck,
            head=run.head,
            num_classes=len(classes),
            pretrained=run.pretrained,
            classes=classes,
        )
    except PretrainedUnavailableError as err:
        raise PretrainedUnavailableError(
            f"{err} On the command line: --pretrained PATH or --pretrained false."
        ) from err
    loaders = _folder_loaders(data, task, model, run)
    run.freeze.apply(model, loaders["train"])
    _say(
        f"transferkit train: {model.config['backbone']} + {run.neck} neck + {run.head} head ({task.name}), "
        f"pretrained={run.pretrained}, {_image_size_text(model, run.image_size)}",
        f"data: {data}: {_describe_data(loaders, classes)}",
        _freeze_text(model, run.freeze.text),
        model.freeze_summary(),
    )
    if run.resume:
        _say(f"resuming the run in {run.out}/ after its last completed epoch")
    arguments = {k: getattr(run, k) for k in TRAIN_DEFAULTS}
    meta = {
        "task": task.name,
        "classes": list(classes),
        **arguments,
        "freeze": run.freeze.text,
        "transferkit_version": __version__,
    }
    trainer = _trainer(
        model, run.out, epochs=run.epochs, lr=run.lr, device=run.device, seed=run.seed, checkpoint=True,
        resume=run.resume, label_smoothing=run.label_smoothing, tensorboard=run.log == "tensorboard",
        mlflow={k: v for k, v in meta.items() if k != "classes"} if run.log == "mlflow" else None,
    )  # fmt: skip
    remove_entries(replaced)  # every argument is checked now: --overwrite deletes the earlier run
    try:
        _, plots = _fit_and_save(trainer, loaders, run.out, meta=meta)
    except Interrupted as stop:
        done = (
            f"after {stop.epochs_done} of {run.epochs} epochs"
            if has_checkpoint(run.out)
            else "during its first epoch (no checkpoint yet)"
        )
        print(
            f"transferkit train: interrupted {done}; {run.out}/ keeps the run. Continue it with: "
            f"{_resume_command(run.out)}",
            file=sys.stderr,
        )
        return 130
    except Exception:
        if not run.resume and not has_checkpoint(run.out):
            discard_unstarted_run(run.out)
        raise
    files = ["config.json", "model.safetensors", META_FILE, HISTORY_FILE, HISTORY_CSV]
    files += [p.name for p in plots] + (["tb/"] if run.log == "tensorboard" else [])
    _say(f"saved to {run.out}/: {', '.join(files)}")
    if run.log == "mlflow":
        logged = [run.out / name for name in (META_FILE, HISTORY_FILE, HISTORY_CSV)] + plots
        _say(_log_to_mlflow(trainer, logged))
    reports = [p for p in plots if p.name == REPORT_FILE]
    if reports:
        _say(f"report: {reports[0]}")
    return 0
