"""Object detection by transfer learning: a pretrained ResNet-18, an FPN-lite neck and an FCOS head.

The data is a folder of images with boxes, COCO-style or Pascal VOC:

    detection_data/train/images/*.jpg   detection_data/train/annotations.json      (COCO)
    detection_data/val/images/*.jpg     detection_data/val/annotations.json
or
    detection_data/train/images/a.jpg   detection_data/train/annotations/a.xml     (Pascal VOC)
    detection_data/classes.txt          one class name per line (optional for VOC)

Usage:

    python examples/detect_folder.py --data detection_data --epochs 12
    python examples/detect_folder.py --synthetic --pretrained false --epochs 10 --image-size 64  # offline

The first backbone blocks stay frozen and, with pretrained weights, every backbone BatchNorm keeps its
ImageNet statistics (``bn="frozen_all"``, the detection default, as in torchvision's detectors). The
model goes to ``--out`` with a picture of the predicted boxes over the first val images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Subset

from transferkit import Trainer, build_model
from transferkit.data import collate_detection, detection_folder_loaders, make_shapes_detection_folder
from transferkit.viz import show_predictions


def parse_pretrained(text: str) -> bool | str:
    """Reads ``--pretrained``: ``true``, ``false``, a weights tag (``IMAGENET1K_V1``) or a file path."""
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("detection_data"), help="dataset root")
    parser.add_argument("--synthetic", action="store_true", help="train on generated shapes, not --data")
    parser.add_argument("--format", choices=("coco", "voc"), default="coco", help="of the --synthetic folder")
    parser.add_argument("--backbone", default="resnet18", help="any name from transferkit.list_backbones()")
    parser.add_argument("--head", default="fcos", help="fcos, retinanet, fasterrcnn or ssdlite")
    parser.add_argument("--pretrained", type=parse_pretrained, default=True, help="true, false, TAG or PATH")
    parser.add_argument("--train-blocks", type=int, default=6, help="backbone blocks that train (last_n)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's and neck's learning rate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--draw", type=int, default=8, help="val images to draw with their boxes")
    parser.add_argument("--out", type=Path, default=Path("runs/detection"))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Builds, freezes, trains and saves the detector; draws its boxes over the first val images.

    Args:
        args: The options from `parse_args`.
        data: Dataset root with ``train/`` and ``val/`` detection splits.

    Returns:
        ``history`` (one dict per epoch, with ``val_map`` and ``val_map_50``), ``metrics`` of the final
        model on the val split (``map``, ``map_50``), ``picture`` (the drawn PNG, or None) and ``out``.
    """
    classes = detection_folder_loaders(data)["train"].dataset.classes  # read before any weights load
    model = build_model(
        args.backbone, neck="fpn_lite", head=args.head, num_classes=len(classes), classes=classes,
        pretrained=args.pretrained,
    )  # fmt: skip
    model.freeze(policy="last_n", n=min(args.train_blocks, len(model.blocks)))
    print(f"training blocks {model.trainable_blocks}; backbone BatchNorm: {model.freeze_state()['bn']}")

    loaders = detection_folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, num_workers=args.workers
    )
    trainer = Trainer(model, epochs=args.epochs, lr=args.lr)
    history = trainer.fit(loaders)  # ends with the weights of the epoch with the best val_map
    metrics = trainer.evaluate(loaders["val"])
    print(f"val mAP@[.5:.95] {metrics['map']:.3f}, mAP@0.5 {metrics['map_50']:.3f}")

    model.save(args.out)
    picture = None
    if args.draw > 0:
        val = loaders["val"].dataset
        first = DataLoader(
            Subset(val, range(min(args.draw, len(val)))), batch_size=8, collate_fn=collate_detection
        )
        picture = args.out / "boxes.png"
        show_predictions(model, first, picture, max_images=args.draw)  # predicted solid, true dashed
    return {"history": history, "metrics": metrics, "picture": picture, "out": args.out}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the example; see the module docstring. Returns what `train` returns."""
    args = parse_args(argv)
    if not args.synthetic:
        return train(args, args.data)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_detection_folder(
            Path(tmp) / "shapes", per_split={"train": 32, "val": 8}, image_size=64, format=args.format
        )
        return train(args, data)


if __name__ == "__main__":
    main()
