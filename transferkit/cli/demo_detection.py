"""``transferkit demo --task detection``: the offline end-to-end run for boxes, explained step by step.

It writes a COCO-style folder of generated shapes (several per image, each with its box), trains a
detection head (YOLO unless ``--head`` names another: `HEAD_PARTS`) on a randomly initialised resnet18 +
FPN-lite, reloads the saved run folder, evaluates its COCO mAP and draws its boxes over a few val
images, through the same code as ``eval`` and ``predict``. `DETECTION_DEMO` holds its two sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .. import build_model
from ..data import make_shapes_detection_folder
from ..tasks import get_task
from .demo_common import DemoSettings, fresh_demo_data, mark_demo_data, train_and_reload
from .evaluate import _metric_lines
from .predict import predict_files
from .run_report import REPORT_FILE
from .runs import _count, _describe_data, _say

DETECTION_CLASSES = 3
DETECTION_HEAD = "yolo"  # without --head: the best mAP and the fastest (docs/detection.md)
# what the demo says of each head: what it is built from, and what its loss adds up
HEAD_PARTS = {
    "fcos": ("torchvision's FCOS parts", "FCOS's classification + box + centre-ness"),
    "retinanet": ("torchvision's RetinaNet parts", "RetinaNet's focal classification + box regression"),
    "fasterrcnn": (
        "torchvision's Faster R-CNN parts: RPN proposals, then RoI heads",
        "the RPN's objectness + box and the RoI heads' classification + box",
    ),
    "ssdlite": ("torchvision's SSDLite parts", "SSD's classification (hard negatives mined) + box"),
    "yolo": (
        "transferkit's anchor-free YOLO head: decoupled branches, DFL boxes, task-aligned targets",
        "the YOLO head's BCE classification + complete-IoU box + DFL",
    ),
}
# per_class is images per split here: every image holds one to three shapes
DETECTION_DEMO = {
    "full": DemoSettings({"train": 768, "val": 64}, image_size=64, epochs=8, freeze="none", batch_size=16),
    "quick": DemoSettings({"train": 4, "val": 2}, image_size=64, epochs=1, freeze="none", batch_size=4),
}


def run_detection_demo(args: argparse.Namespace) -> int:
    """The detection demo: data, model, training, evaluation, boxes; returns the exit status."""
    started = time.perf_counter()
    settings = DETECTION_DEMO["quick" if args.quick else "full"]
    head = getattr(args, "head", None) or DETECTION_HEAD
    built_from, loss = HEAD_PARTS.get(head, (f"the {head} head's parts", f"the {head} head's loss parts"))
    epochs = args.epochs or settings.epochs
    out = Path(args.out)
    data = out / "data"
    counts = settings.per_class
    _say(
        f"transferkit demo --task detection: train {head} on boxes of synthetic shapes, offline, "
        f"on the {'GPU' if torch.cuda.is_available() else 'CPU'}; everything goes to {out}/",
        "",
        f"[1/5] data: writing a COCO-style folder ({settings.image_size}px PNGs with one to three shapes "
        f"each, {counts['train']} train + {counts['val']} val images, annotations.json per split) to {data}/",
    )
    fresh_demo_data(data)
    make_shapes_detection_folder(
        data, num_classes=DETECTION_CLASSES, per_split=counts, image_size=settings.image_size, seed=args.seed
    )
    mark_demo_data(data)

    torch.manual_seed(args.seed)
    model = build_model("resnet18", neck="fpn_lite", head=head, num_classes=DETECTION_CLASSES,
                        pretrained=False)  # fmt: skip
    task = get_task(model.task)
    loaders = task.folder_loaders(
        data, model, batch_size=settings.batch_size, image_size=settings.image_size, seed=args.seed
    )
    train: Any = loaders["train"].dataset  # a folder dataset, with the class names
    classes = train.classes
    _say(
        "",
        "[2/5] model: resnet18 backbone (random init, pretrained=False: nothing is downloaded) + fpn_lite "
        f"neck + {head} head ({built_from}; sized from the strides {model.head.strides}); with random "
        "weights BatchNorm trains (pretrained detectors keep it frozen):",
        model.freeze_summary(),
        "",
        f"[3/5] training {_count(epochs, 'epoch')} on {_describe_data(loaders, classes)}; flips, zooms and "
        f"crops move the boxes with the images; the loss is {loss}",
    )
    history, plots, reloaded, meta, metrics, count = train_and_reload(
        model,
        loaders,
        out,
        data=data,
        freeze=settings.freeze,
        epochs=epochs,
        settings=settings,
        seed=args.seed,
    )
    _say(
        "",
        f"[4/5] COCO box mAP of the saved model, reloaded from {out}/, on the {count} val images "
        "(guessing scores 0):",
        *(f"      {line}" for line in _metric_lines(metrics)),
    )
    samples = sorted((data / "val" / "images").iterdir())[:4]
    assert task.predict_picture is not None, "the detection task draws its predictions"
    picture = out / task.predict_picture
    lines = predict_files(reloaded, meta, samples, draw=picture)
    _say("", f"[5/5] boxes for {len(samples)} val images (class score [x1, y1, x2, y2]):",
         *(f"      {line}" for line in lines))  # fmt: skip
    seconds = time.perf_counter() - started
    files = {
        str(picture): "those val images with their predicted boxes",
        str(out / "predictions.png"): "val images: predicted boxes (solid) over the true ones (dashed)",
        str(out / "history.png"): "loss parts and mAP per epoch",
    }
    if not any(p.name == "history.png" for p in plots):
        del files[str(out / "predictions.png")], files[str(out / "history.png")]
    if any(p.name == REPORT_FILE for p in plots):
        files[str(out / REPORT_FILE)] = "the run report: plan, curves, metrics, timing (open in a browser)"
    width = max(map(len, files))
    _say(
        "",
        f"What happened: {_count(len(history), 'epoch')}, {seconds:.0f}s in all; val mAP@0.5 "
        f"{metrics['map_50']:.2f}, mAP@[.5:.95] {metrics['map']:.2f}.",
        "Where to look:",
        *(f"  {place:<{width}}  {text}" for place, text in files.items()),
        "Next steps:",
        f"  transferkit eval --model {out} --data {data}",
        f"  transferkit predict --model {out} {data / 'val' / 'images'}",
        f"  transferkit train --head {head} --data YOUR_FOLDER --backbone resnet18 --out runs/boxes",
        "      YOUR_FOLDER holds train/images/* with train/annotations.json (COCO) or",
        "      train/annotations/*.xml (Pascal VOC), and the same under val/; see docs/detection.md",
    )
    return 0
