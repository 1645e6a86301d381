"""Gradual unfreezing: the head trains first, then one more backbone block joins every few epochs.

At epoch ``e`` (from 0) the last ``n + step * (e // every)`` blocks of the backbone train, so the new,
randomly initialised head settles before its gradients reach the pretrained blocks, and the blocks nearest
the input (the most generic features) change last and least. Layer-wise learning-rate decay
(``--layer-decay``) adds to that: each block's rate is ``layer_decay`` times that of the block above it.

    python examples/gradual_unfreeze.py --data hymenoptera_data --epochs 12 --every 2
    python examples/gradual_unfreeze.py --synthetic --pretrained false --epochs 3 --image-size 64

The data is a classification folder (``train/<class>/*.jpg``, ``val/<class>/*.jpg``). The script prints,
per epoch, how many blocks trained and the validation accuracy, and saves the model to ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from transferkit import Trainer, build_model
from transferkit.data import image_folder_loaders, make_shapes_folder


def parse_pretrained(text: str) -> bool | str:
    """Reads ``--pretrained``: ``true``, ``false``, a weights tag (``IMAGENET1K_V1``) or a file path."""
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("hymenoptera_data"), help="image folder root")
    parser.add_argument("--synthetic", action="store_true", help="train on generated shapes, not --data")
    parser.add_argument("--backbone", default="resnet18", help="any name from transferkit.list_backbones()")
    parser.add_argument("--pretrained", type=parse_pretrained, default=True, help="true, false, TAG or PATH")
    parser.add_argument("--n", type=int, default=0, help="backbone blocks that train from epoch 0")
    parser.add_argument("--step", type=int, default=1, help="blocks unfrozen at each stage")
    parser.add_argument("--every", type=int, default=1, help="epochs per stage")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate")
    parser.add_argument("--layer-decay", type=float, default=0.75, help="lr factor per block, head to stem")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--out", type=Path, default=Path("runs/gradual"))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Trains with the ``gradual`` freeze policy and layer-wise learning rates; saves the model.

    The Trainer builds one optimizer up front with a parameter group per block (frozen blocks included)
    and calls ``model.apply_schedule(epoch)`` at the start of every epoch, so a block that unfreezes
    starts training at its own, already scheduled, learning rate.

    Args:
        args: The options from `parse_args`.
        data: Dataset root with ``train/<class>/`` and ``val/<class>/`` folders.

    Returns:
        ``history`` (one dict per epoch; ``trainable_blocks`` counts the blocks that trained) and
        ``blocks`` (the backbone's block names, input to output).
    """
    num_classes = len([p for p in (data / "train").iterdir() if p.is_dir() and not p.name.startswith(".")])
    model = build_model(args.backbone, num_classes=num_classes, pretrained=args.pretrained)
    model.freeze(policy="gradual", n=args.n, step=args.step, every=args.every)

    loaders = image_folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, num_workers=args.workers
    )
    trainer = Trainer(model, epochs=args.epochs, lr=args.lr, layer_decay=args.layer_decay)
    history = trainer.fit(loaders)
    for row in history:
        newest = model.blocks[-row["trainable_blocks"]] if row["trainable_blocks"] else "(head only)"
        print(
            f"epoch {row['epoch'] + 1}: {row['trainable_blocks']}/{len(model.blocks)} blocks trained "
            f"(down to {newest}), val acc {row['val_acc']:.3f}"
        )
    model.save(args.out)
    return {"history": history, "blocks": model.blocks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the example; see the module docstring. Returns what `train` returns."""
    args = parse_args(argv)
    if not args.synthetic:
        return train(args, args.data)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_folder(Path(tmp) / "shapes", num_classes=2, per_class={"train": 8, "val": 4})
        return train(args, data)


if __name__ == "__main__":
    main()
