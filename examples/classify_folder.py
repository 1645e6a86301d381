"""Image classification by transfer learning: PyTorch's ants-and-bees tutorial, written with transferkit.

A ResNet-18 pretrained on ImageNet gets a new head for the folder's classes and is fine-tuned on a small
image folder laid out like the tutorial's ``hymenoptera_data``:

    hymenoptera_data/train/ants/*.jpg   hymenoptera_data/train/bees/*.jpg
    hymenoptera_data/val/ants/*.jpg     hymenoptera_data/val/bees/*.jpg

Any class names and any number of classes work. The tutorial's two variants are one flag apart:

    python examples/classify_folder.py --data hymenoptera_data                 # the last 4 blocks train
    python examples/classify_folder.py --data hymenoptera_data --freeze none   # fine-tune everything
    python examples/classify_folder.py --data hymenoptera_data --freeze all    # fixed feature extractor

The model (its class names included: ``model.classes``) and the training history are written to ``--out``
(``runs/ants_bees``); ``transferkit.load_model(out)`` loads the model back, and ``transferkit eval`` and
``transferkit predict`` read it by name. Without the data or a network, try it on a small
generated set of shapes:

    python examples/classify_folder.py --synthetic --pretrained false --epochs 3 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from transferkit import Trainer, build_model, load_model
from transferkit.data import image_folder_loaders, make_shapes_folder


def parse_pretrained(text: str) -> bool | str:
    """Reads ``--pretrained``: ``true``, ``false``, a weights tag (``IMAGENET1K_V1``) or a file path."""
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_freeze(text: str) -> dict[str, Any]:
    """Reads ``--freeze`` (``all``, ``none``, ``last_n:K``, ``gradual[:N:STEP:EVERY]``) into `freeze` kwargs.

    Examples:
        >>> parse_freeze("last_n:4")
        {'policy': 'last_n', 'n': 4}
    """
    policy, *numbers = text.split(":")
    names = {"all": [], "none": [], "last_n": ["n"], "gradual": ["n", "step", "every"]}.get(policy)
    if names is None or len(numbers) > len(names) or (policy == "last_n" and not numbers):
        raise argparse.ArgumentTypeError(
            f"--freeze {text!r}: use all, none, last_n:K or gradual[:N:STEP:EVERY] (e.g. last_n:4)"
        )
    try:
        return {"policy": policy, **{name: int(value) for name, value in zip(names, numbers)}}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--freeze {text!r}: the numbers must be integers") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("hymenoptera_data"), help="image folder root")
    parser.add_argument("--synthetic", action="store_true", help="train on generated shapes, not --data")
    parser.add_argument("--backbone", default="resnet18", help="any name from transferkit.list_backbones()")
    parser.add_argument("--pretrained", type=parse_pretrained, default=True, help="true, false, TAG or PATH")
    parser.add_argument("--freeze", type=parse_freeze, default="last_n:4", help="all, none, last_n:K, ...")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--out", type=Path, default=Path("runs/ants_bees"))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Builds, freezes, fine-tunes and saves the model; then checks the saved copy on the val split.

    Args:
        args: The options from `parse_args`.
        data: Dataset root with ``train/<class>/`` and ``val/<class>/`` folders.

    Returns:
        ``history`` (one dict per epoch), ``metrics`` of the reloaded model on the val split
        (``{"loss", "acc"}``), the ``classes`` and the output folder ``out``.
    """
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    model = build_model(args.backbone, num_classes=len(classes), pretrained=args.pretrained, classes=classes)
    model.freeze(**args.freeze)
    print(model.freeze_summary())

    # Transforms follow the backbone's pretrained preprocessing (size, mean, std): nothing to hand-copy.
    loaders = image_folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, num_workers=args.workers
    )
    trainer = Trainer(model, epochs=args.epochs, lr=args.lr)
    history = trainer.fit(loaders)  # ends with the weights of the epoch with the lowest val loss
    best = min(history, key=lambda row: row["val_loss"])
    print(f"best epoch {best['epoch'] + 1}: val loss {best['val_loss']:.4f}, val acc {best['val_acc']:.3f}")

    model.save(args.out)  # config.json (with the class names) + model.safetensors
    (args.out / "history.json").write_text(json.dumps(history, indent=1))

    reloaded = load_model(args.out)
    metrics = Trainer(reloaded, progress=False).evaluate(loaders["val"])
    logits = Trainer(reloaded, progress=False).predict(loaders["val"])
    guesses = [reloaded.classes[i] for i in logits.argmax(dim=1)[:8].tolist()]
    print(f"saved to {args.out}; reloaded: val acc {metrics['acc']:.3f}; first predictions: {guesses}")
    return {"history": history, "metrics": metrics, "classes": classes, "out": args.out}


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
