"""Benchmark: FCOS on a resnet18 from random weights learns synthetic shapes detection (CPU).

The model is ``build_model("resnet18", neck="fpn_lite", head="fcos", pretrained=False)`` trained by the
Trainer with its defaults (AdamW, cosine schedule, BatchNorm training: random weights); the data are
SyntheticShapesDetection images (one to three non-overlapping shapes of three kinds per image, each with
its exact box), the training ones drawn afresh with the training transforms (flip, colour jitter), the
validation ones from other seeds. Each epoch's COCO mAP (``val_map``) and mAP@0.5 (``val_map_50``) are
printed as a Markdown table; the run passes when the best mAP@0.5 reaches ``--target``.

    python benchmarks/bench_detection.py                      # 64 px, 1024 train images, 2 threads
    python benchmarks/bench_detection.py --head retinanet --epochs 12
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from transferkit import Trainer, build_model
from transferkit.data import DEFAULT_DATA_CONFIG, SyntheticShapesDetection, build_detection_transforms
from transferkit.tasks import get_task

SHAPE_KINDS = 3


class _Epochs:
    """Prints each epoch's row as it ends (the run takes minutes)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer) -> None:
        row = trainer.history[-1]
        print(
            f"| {row['epoch'] + 1} | {row['train_loss']:.3f} | {row['val_map']:.3f} "
            f"| {row['val_map_50']:.3f} | {time.perf_counter() - self.started:.0f} |",
            flush=True,
        )


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train once; returns the Trainer's history."""
    collate = get_task("detection").collate_fn
    augment = build_detection_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=args.size)
    train = SyntheticShapesDetection(
        args.train, image_size=args.size, num_classes=SHAPE_KINDS, seed=0, transform=augment
    )
    val = SyntheticShapesDetection(args.val, image_size=args.size, num_classes=SHAPE_KINDS, seed=1)
    val = [val[i] for i in range(len(val))]  # rendered once
    loaders = {
        "train": DataLoader(
            train, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        ),
        "val": DataLoader(val, batch_size=32, collate_fn=collate),
    }  # fmt: skip
    torch.manual_seed(args.seed)
    model = build_model(
        "resnet18", neck="fpn_lite", head=args.head, num_classes=SHAPE_KINDS, pretrained=False
    )
    trainer = Trainer(
        model, epochs=args.epochs, lr=args.lr, device="cpu", progress=False, seed=0, callbacks=[_Epochs()]
    )
    return trainer.fit(loaders)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", default="fcos", help="fcos, retinanet, fasterrcnn or ssdlite")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--train", type=int, default=1024, help="training images (drawn afresh each epoch)")
    p.add_argument("--val", type=int, default=128, help="validation images")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation")
    p.add_argument("--target", type=float, default=0.5, help="the best val mAP@0.5 to reach")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, print the table and whether the target was reached; returns the history."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{args.head} on resnet18 + fpn_lite from random weights, {args.size} px, {args.train} train / "
        f"{args.val} val images, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, "
        f"{args.threads} threads\n\n| epoch | train loss | val mAP | val mAP@0.5 | seconds |\n"
        "|---:|---:|---:|---:|---:|",
        flush=True,
    )
    history = run(args)
    best = max(history, key=lambda row: row["val_map_50"])
    reached = "reached" if best["val_map_50"] >= args.target else "did NOT reach"
    print(
        f"\nbest val mAP@0.5 {best['val_map_50']:.3f} at epoch {best['epoch'] + 1}: {reached} {args.target}"
    )
    return history


if __name__ == "__main__":
    main()
