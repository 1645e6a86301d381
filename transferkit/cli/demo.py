"""``transferkit demo``: an offline end-to-end run on generated shapes, explained step by step.

It writes a small image folder, fine-tunes a randomly initialised resnet18 with gradual unfreezing,
reloads the saved run folder, evaluates and predicts with it (through the same code as ``eval`` and
``predict``), and ends with where everything went and what to run next. `DEMO` holds its two sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .. import build_model
from ..data import make_shapes_folder
from ..tasks import get_task
from .data_kind import DEFAULT_HEADS, _heads_of, _task_of
from .demo_common import DemoSettings, fresh_demo_data, mark_demo_data, train_and_reload
from .demo_detection import run_detection_demo
from .evaluate import _metric_lines
from .lock import locked_run_folder
from .options import UsageError, _positive_int, parse_freeze
from .predict import predict_files
from .run_report import REPORT_FILE
from .runs import _count, _describe_data, _say

DEMO_CLASSES = 3
DEMO_BACKBONE = "resnet18"
CHANCE = 1 / DEMO_CLASSES  # the accuracy of guessing, which the demo's result is read against


DEMO = {
    "full": DemoSettings({"train": 200, "val": 50}, image_size=48, epochs=12, freeze="gradual:5:2:1"),
    "quick": DemoSettings({"train": 4, "val": 2}, image_size=32, epochs=1, freeze="gradual:5:2:1"),
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand to ``commands``."""
    demo = commands.add_parser(
        "demo", help="offline end-to-end demo on synthetic shapes (about a minute on a laptop CPU)"
    )
    demo.add_argument("--out", default="transferkit-demo", help="folder for data, model and plots")
    demo.add_argument("--epochs", type=_positive_int, default=None, help=f"default {DEMO['full'].epochs}")
    demo.add_argument("--quick", action="store_true", help="a few images, 1 epoch: a smoke test in seconds")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--task", choices=("classification", "detection"), default="classification",
        help="classification (default: class folders) or detection (boxes, YOLO unless --head says)",
    )  # fmt: skip
    demo.add_argument(
        "--head", default=None,
        help="with --task detection: yolo (default), fcos, retinanet, fasterrcnn or ssdlite",
    )  # fmt: skip
    demo.set_defaults(func=_cmd_demo)


def _unfrozen_at(history: list[dict[str, Any]]) -> list[int]:
    """1-based epochs that train more blocks than the epoch before."""
    pairs = zip(history, history[1:])
    return [row["epoch"] + 1 for prev, row in pairs if row["trainable_blocks"] > prev["trainable_blocks"]]


def demo_head(task: str, head: str | None) -> str:
    """The head the ``task`` demo trains: ``head`` when it is one of the task's, else its default.

    Raises:
        UsageError: ``head`` is unknown, or a head of another task; the message names the task's heads
            (or the ``--task`` that trains it).

    Examples:
        >>> demo_head("detection", None), demo_head("detection", "fcos")
        ('yolo', 'fcos')
    """
    if head is None:
        return DEFAULT_HEADS[task]
    heads = _heads_of(task)
    if head in heads:
        return head
    try:
        other = _task_of(head)
    except ValueError as err:  # an unknown name: the registry's message names the closest ones
        raise UsageError("transferkit demo", f"--head {head}: {err}") from None
    if task == "classification" and other == "detection":
        fix = f"pass --task detection to train {head}"
    else:
        fix = f"the {task} demo trains {_one_of(heads)}"
    raise UsageError("transferkit demo", f"--head {head} is a {other} head, not a {task} one: {fix}")


def _one_of(heads: list[str]) -> str:
    """``yolo (default), fasterrcnn, fcos, retinanet or ssdlite``; a lone head as it is."""
    first, *others = heads
    if not others:
        return first
    listed = ", ".join(others[:-1]) + (" or " if others[:-1] else "") + others[-1]
    return f"{first} (default)" + (", " if others[:-1] else " or ") + listed


def _cmd_demo(args: argparse.Namespace) -> int:
    args.head = demo_head(args.task, args.head)  # checked before the folder is touched
    with locked_run_folder(Path(args.out), command="transferkit demo"):  # one demo per folder at a time
        if args.task == "detection":  # the demo's own --task option; each demo is a module of its own
            return run_detection_demo(args)
        return _classification_demo(args)


def _classification_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = DEMO["quick" if args.quick else "full"]
    epochs = args.epochs or settings.epochs
    out = Path(args.out)
    data = out / "data"
    where = "GPU" if torch.cuda.is_available() else "CPU"
    _say(
        f"transferkit demo: fine-tune {DEMO_BACKBONE} on synthetic shapes, offline, on the {where}; "
        f"everything goes to {out}/",
        "",
        f"[1/5] data: writing a {DEMO_CLASSES}-class image folder of shapes ({settings.image_size}px JPEGs, "
        f"{settings.per_class['train']} train + {settings.per_class['val']} val per class) to {data}/",
    )
    fresh_demo_data(data)
    make_shapes_folder(
        data,
        num_classes=DEMO_CLASSES,
        per_class=settings.per_class,
        image_size=settings.image_size,
        seed=args.seed,
    )
    mark_demo_data(data)

    freeze = parse_freeze(settings.freeze)
    torch.manual_seed(args.seed)
    model = build_model(DEMO_BACKBONE, num_classes=DEMO_CLASSES, pretrained=False)  # names: from the data
    freeze.apply(model)
    # The default training crops (down to 35% of the image, made for photos and pretrained weights) cut
    # these small centred shapes apart, and a randomly initialised network then needs several times more
    # epochs; so the demo trains on the whole images, with the deterministic eval transform.
    loaders = get_task(model.task).folder_loaders(
        data,
        model,
        batch_size=settings.batch_size,
        image_size=settings.image_size,
        seed=args.seed,
        augment=False,
    )
    train: Any = loaders["train"].dataset  # a folder dataset, with the class names
    classes = train.classes
    n, step, every = (freeze.kwargs[k] for k in ("n", "step", "every"))
    _say(
        "",
        f"[2/5] model: {DEMO_BACKBONE} backbone (random init, pretrained=False: nothing is downloaded) "
        "+ identity neck + linear head",
        f"      freeze {freeze.text}: the last {n} of {len(model.blocks)} backbone blocks train from the "
        f"start and {step} more unfreeze every {_count(every, 'epoch')}; the head always trains:",
        model.freeze_summary(),
        "",
        f"[3/5] training {_count(epochs, 'epoch')} on {_describe_data(loaders, classes)}; the class names "
        "come with the data and are saved with the model",
    )
    history, plots, reloaded, meta, metrics, count = train_and_reload(
        model, loaders, out, data=data, freeze=freeze.text, epochs=epochs, settings=settings, seed=args.seed
    )
    _say(
        "",
        f"[4/5] evaluation of the saved model, reloaded from {out}/, on the {count} val images "
        f"(chance accuracy {CHANCE:.2f}):",
        *(f"      {line}" for line in _metric_lines(metrics)),
    )
    samples = [sorted((data / "val" / name).iterdir())[0] for name in classes]
    _say(
        "",
        "[5/5] predictions for one val image of each class (top classes with probabilities):",
        *(f"      {line}" for line in predict_files(reloaded, meta, samples)),
    )
    seconds = time.perf_counter() - started
    _say("", *_summary(out, data, classes, history, plots, accuracy=metrics["acc"], seconds=seconds))
    return 0


def _summary(
    out: Path,
    data: Path,
    classes: list[str],
    history: list[dict[str, Any]],
    plots: list[Path],
    *,
    accuracy: float,
    seconds: float,
) -> list[str]:
    """The demo's closing lines: what happened, where each file is, and the commands to try next."""
    unfrozen = ", ".join(map(str, _unfrozen_at(history))) or "none"
    files = {
        "history.png": "loss and accuracy per epoch; dashed lines where blocks unfroze",
        "predictions.png": "val images titled with predicted vs true class, the mistakes first",
        "history.json": "the numbers behind the curves",
    }
    if not any(p.name == "history.png" for p in plots):
        del files["history.png"], files["predictions.png"]
    if any(p.name == REPORT_FILE for p in plots):
        files[REPORT_FILE] = "the run report: plan, curves, metrics, top losses, calibration (a browser page)"
    places = {str(out / name): text for name, text in files.items()}
    places[f"{out}/"] = "the model: config.json (with the class names) + model.safetensors, transferkit.json"
    places[f"{data}/"] = "the generated images"
    width = max(map(len, places))
    return [
        f"What happened: {_count(len(history), 'epoch')}, {seconds:.0f}s in all; "
        f"val accuracy {accuracy:.2f} (chance {CHANCE:.2f}); more backbone blocks unfroze at epochs "
        f"{unfrozen}.",
        "Where to look:",
        *(f"  {place:<{width}}  {text}" for place, text in places.items()),
        "Next steps:",
        f"  transferkit eval --model {out} --data {data}",
        f"  transferkit predict --model {out} {data / 'val' / classes[0]}",
        "  transferkit train --data YOUR_FOLDER --backbone resnet18 --freeze last_n:2 --out runs/mine",
        "      YOUR_FOLDER holds train/<class>/*.jpg and val/<class>/*.jpg, like the ants/bees set; with",
        "      internet the ImageNet weights download (--pretrained true, the default), or use a local file",
        "      with --pretrained resnet18.pth",
        "  transferkit list backbones convnext",
    ]
