"""Semantic segmentation by transfer learning: a pretrained ResNet-18, an FPN-lite neck and an FCN head.

The data is a folder of images and index masks (one class index per pixel, 255 = ignore):

    segmentation_data/classes.txt               one class name per line; line i names class i (optional)
    segmentation_data/train/images/0001.jpg     segmentation_data/train/masks/0001.png
    segmentation_data/val/images/0101.jpg       segmentation_data/val/masks/0101.png

Usage:

    python examples/segment_fcn.py --data segmentation_data --epochs 20
    python examples/segment_fcn.py --synthetic --pretrained false --epochs 5 --image-size 64   # no download

The backbone's stem and first stage stay frozen (generic edges and textures transfer as they are); the
rest, the neck and the head train. The model goes to ``--out`` with the predicted masks of the first
val images (palette PNGs, one colour per class).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from transferkit import Trainer, build_model
from transferkit.data import make_shapes_segmentation_folder, segmentation_folder_loaders

# Colours of classes 0, 1, 2, ... in the written masks (black background, then distinct hues).
PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200, 245, 130, 48, 145, 30, 180, 70, 240, 240]


def parse_pretrained(text: str) -> bool | str:
    """Reads ``--pretrained``: ``true``, ``false``, a weights tag (``IMAGENET1K_V1``) or a file path."""
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("segmentation_data"), help="dataset root")
    parser.add_argument("--synthetic", action="store_true", help="train on generated shapes, not --data")
    parser.add_argument("--num-classes", type=int, default=None, help="default: lines of classes.txt")
    parser.add_argument("--backbone", default="resnet18", help="any name from transferkit.list_backbones()")
    parser.add_argument("--pretrained", type=parse_pretrained, default=True, help="true, false, TAG or PATH")
    parser.add_argument("--train-blocks", type=int, default=6, help="backbone blocks that train (last_n)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's and neck's learning rate")
    parser.add_argument("--layer-decay", type=float, default=0.8, help="lr factor per block, head to stem")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--save-masks", type=int, default=4, help="val images whose masks to write")
    parser.add_argument("--out", type=Path, default=Path("runs/segmentation"))
    return parser.parse_args(argv)


def count_classes(data: Path, num_classes: int | None) -> int:
    """``num_classes`` when given, else the number of names in ``data/classes.txt``.

    Raises:
        ValueError: Neither is available.
    """
    if num_classes is not None:
        return num_classes
    names = data / "classes.txt"
    if not names.is_file():
        raise ValueError(f"{names} does not exist: pass --num-classes (background included)")
    return len([line for line in names.read_text().splitlines() if line.strip()])


def save_masks(logits: torch.Tensor, out: Path) -> list[Path]:
    """Writes ``argmax`` masks of ``logits`` ``[N, K, H, W]`` as palette PNGs ``out/mask_<i>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, mask in enumerate(logits.argmax(dim=1).to(torch.uint8)):
        image = Image.fromarray(mask.numpy())  # mode L: one class index per pixel
        image.putpalette(PALETTE)  # now mode P: the same indices, shown in colour
        paths.append(out / f"mask_{i}.png")
        image.save(paths[-1])
    return paths


def train(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Builds, freezes, trains and saves the segmentation model; writes the first val masks.

    Args:
        args: The options from `parse_args`.
        data: Dataset root with ``train/`` and ``val/`` folders of ``images/`` and ``masks/``.

    Returns:
        ``history`` (one dict per epoch, with ``val_miou`` and pixel ``val_acc``), ``metrics`` of the
        final model on the val split, ``masks`` (the written PNG paths) and ``out``.
    """
    model = build_model(
        args.backbone,
        neck="fpn_lite",
        head="fcn",
        num_classes=count_classes(data, args.num_classes),
        pretrained=args.pretrained,
    )
    model.freeze(policy="last_n", n=min(args.train_blocks, len(model.blocks)))
    print(f"training blocks {model.trainable_blocks} of {model.blocks}")

    loaders = segmentation_folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, num_workers=args.workers
    )
    trainer = Trainer(model, epochs=args.epochs, lr=args.lr, layer_decay=args.layer_decay, monitor="val_miou")
    history = trainer.fit(loaders)  # ends with the weights of the epoch with the best val mIoU
    metrics = trainer.evaluate(loaders["val"])
    print(f"val mIoU {metrics['miou']:.3f}, pixel accuracy {metrics['acc']:.3f}")

    model.save(args.out)
    masks = []
    if args.save_masks > 0:
        val = loaders["val"].dataset
        first = Subset(val, range(min(args.save_masks, len(val))))
        masks = save_masks(trainer.predict(DataLoader(first, batch_size=args.batch_size)), args.out)
    return {"history": history, "metrics": metrics, "masks": masks, "out": args.out}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the example; see the module docstring. Returns what `train` returns."""
    args = parse_args(argv)
    if not args.synthetic:
        return train(args, args.data)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_segmentation_folder(Path(tmp) / "shapes", per_split={"train": 16, "val": 8})
        return train(args, data)


if __name__ == "__main__":
    main()
