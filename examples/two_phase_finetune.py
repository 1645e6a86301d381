"""Two-phase fine-tuning: train the new head on a frozen backbone, then the top blocks at a lower rate.

Phase 1 (feature extraction) fits the randomly initialised head while the whole pretrained backbone stays
fixed: large early gradients from the new head never reach, and never damage, the pretrained weights.
Phase 2 unfreezes the last ``--unfreeze`` blocks and trains them with the head at a learning rate ten
times lower (``--finetune-lr``), so the pretrained features adapt to the new data without being
overwritten.

With ``--cache-features`` phase 1 computes the frozen backbone's features once per image and then trains
only the head on them: each epoch after the first costs a pass over the head. The cache needs the same
input every epoch, so phase 1 then trains without augmentation (phase 2 always augments).

    python examples/two_phase_finetune.py --data hymenoptera_data
    python examples/two_phase_finetune.py --data hymenoptera_data --cache-features --head-epochs 20
    python examples/two_phase_finetune.py --synthetic --pretrained false --image-size 64 \\
        --head-epochs 2 --finetune-epochs 2

The data is a classification folder (``train/<class>/*.jpg``, ``val/<class>/*.jpg``); the model after
phase 2 goes to ``--out``.
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
    parser.add_argument("--head-epochs", type=int, default=5, help="phase 1: the head alone")
    parser.add_argument("--lr", type=float, default=1e-3, help="phase 1 learning rate")
    parser.add_argument("--cache-features", action="store_true", help="phase 1 on cached backbone features")
    parser.add_argument("--unfreeze", type=int, default=4, help="phase 2: backbone blocks that train")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="phase 2: the top blocks and head")
    parser.add_argument("--finetune-lr", type=float, default=1e-4, help="phase 2 learning rate")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--out", type=Path, default=Path("runs/two_phase"))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Runs both phases on the same model and saves it.

    Each phase gets its own `Trainer` (a fresh optimizer and schedule at its own learning rate); both
    end with the weights of their best validation epoch.

    Args:
        args: The options from `parse_args`.
        data: Dataset root with ``train/<class>/`` and ``val/<class>/`` folders.

    Returns:
        ``head`` and ``finetune``: the two phases' histories (one dict per epoch).
    """
    num_classes = len([p for p in (data / "train").iterdir() if p.is_dir() and not p.name.startswith(".")])
    model = build_model(args.backbone, num_classes=num_classes, pretrained=args.pretrained)
    loaders = image_folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, num_workers=args.workers
    )

    model.freeze()  # phase 1: the whole backbone is fixed; only the head learns
    phase1 = loaders
    if args.cache_features:  # the cache needs fixed inputs: train on the evaluation transforms
        phase1 = image_folder_loaders(
            data,
            model,
            batch_size=args.batch_size,
            image_size=args.image_size,
            num_workers=args.workers,
            augment=False,
        )
    head = Trainer(model, epochs=args.head_epochs, lr=args.lr, cache_features=args.cache_features).fit(phase1)
    print(f"phase 1 (head only): best val acc {max(row['val_acc'] for row in head):.3f}")

    model.freeze(policy="last_n", n=args.unfreeze)  # phase 2: the top blocks join, at a lower rate
    finetune = Trainer(model, epochs=args.finetune_epochs, lr=args.finetune_lr).fit(loaders)
    print(
        f"phase 2 ({', '.join(model.trainable_blocks)} and the head): "
        f"best val acc {max(row['val_acc'] for row in finetune):.3f}"
    )
    model.save(args.out)
    return {"head": head, "finetune": finetune}


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
