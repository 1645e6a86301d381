"""Benchmark: segmentation necks and heads on synthetic shapes, trained from random weights (CPU).

Each combination of neck and head trains the same backbone, from the same random initialisation, on
the same data with the same budget (epochs, batch size, learning rate) through the Trainer, and
reports the best and final validation mIoU and the training time. The default combinations:

- ``identity + fcn``: FCN-8s skip fusion of the backbone's levels of stride >= 8;
- ``aspp + deeplabv3plus``: DeepLabV3+ (ASPP on the coarsest level, the stride-4 decoder skip);
- ``pan + fcn``: the FCN head on the PAN pyramid.

The data are SyntheticShapes segmentation masks (background and 3 shape kinds), rendered once to
tensors; the validation set has other seeds. "all background" is the mIoU of predicting background
everywhere, the floor every model has to beat.

    python benchmarks/bench_segmentation.py                              # resnet18, 64 px, 2 threads
    python benchmarks/bench_segmentation.py --backbone resnet50 --output-stride 16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.data import SyntheticShapes
from transferkit.tasks.metrics import confusion_matrix, miou_from_confusion

COMBINATIONS = ("identity+fcn", "aspp+deeplabv3plus", "pan+fcn")
SHAPE_KINDS = 3  # masks hold background + 3 classes


def render(n: int, size: int, seed: int) -> TensorDataset:
    """``n`` SyntheticShapes segmentation samples as tensors (images, masks)."""
    ds = SyntheticShapes(n, image_size=size, num_classes=SHAPE_KINDS, task="segmentation", seed=seed)
    images, masks = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(np.stack(masks)))


def background_miou(masks: torch.Tensor) -> float:
    """The mIoU of predicting background (class 0) for every pixel."""
    cm = confusion_matrix(torch.zeros_like(masks), masks, SHAPE_KINDS + 1)
    return miou_from_confusion(cm)


def run(args: argparse.Namespace, combination: str, train: TensorDataset, val: TensorDataset) -> dict:
    """Train one ``neck+head`` combination; its row of the table."""
    neck, head = combination.split("+")
    torch.manual_seed(args.seed)
    model = build_model(
        args.backbone,
        neck=neck,
        head=head,
        num_classes=SHAPE_KINDS + 1,
        pretrained=False,
        output_stride=args.output_stride,
    )
    loaders = {
        "train": DataLoader(
            train, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
        "val": DataLoader(val, batch_size=args.batch_size),
    }
    trainer = Trainer(
        model, epochs=args.epochs, lr=args.lr, device="cpu", progress=False, monitor="val_miou", seed=0
    )
    start = time.perf_counter()
    history = trainer.fit(loaders)
    seconds = time.perf_counter() - start
    return {
        "neck": neck,
        "head": head,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "best_val_miou": max(h["val_miou"] for h in history),
        "final_val_miou": history[-1]["val_miou"],
        "seconds": seconds,
    }


def table(rows: list[dict[str, Any]], args: argparse.Namespace, floor: float) -> str:
    """The results as a Markdown table, with the setup above it."""
    stride = f", output_stride {args.output_stride}" if args.output_stride else ""
    lines = [
        f"{args.backbone}{stride} from random weights, {args.size} px, {args.train} train / {args.val} val "
        f"images, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, {args.threads} threads",
        "",
        "| neck | head | params (M) | best val mIoU | final val mIoU | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['neck']} | {r['head']} | {r['params_m']:.2f} | {r['best_val_miou']:.3f} | "
            f"{r['final_val_miou']:.3f} | {r['seconds']:.1f} |"
        )
    lines.append(f"| all background | - | - | {floor:.3f} | {floor:.3f} | - |")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--output-stride", type=int, default=None, choices=(8, 16, 32))
    p.add_argument("--combinations", default=",".join(COMBINATIONS), help="comma-separated neck+head")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--train", type=int, default=128, help="training images")
    p.add_argument("--val", type=int, default=32, help="validation images")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the models' initialisation")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, print the table; returns its rows."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    train, val = render(args.train, args.size, seed=0), render(args.val, args.size, seed=1)
    rows = [run(args, c, train, val) for c in args.combinations.split(",")]
    print(table(rows, args, background_miou(val.tensors[1])))
    return rows


if __name__ == "__main__":
    main()
