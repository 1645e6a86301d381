"""Data-parallel transfer learning with torchrun: the same script on one GPU, eight GPUs or CPU processes.

Launch it with ``torchrun`` (or ``python -m torch.distributed.run``):

    torchrun --nproc_per_node=4 examples/train_ddp.py --data hymenoptera_data --epochs 10
    torchrun --nproc_per_node=2 examples/train_ddp.py --synthetic --pretrained false --image-size 64

Under torchrun the `Trainer` does the distributed work itself: it joins the process group (NCCL on GPUs,
gloo on CPUs), wraps the model in ``DistributedDataParallel``, gives every process its own shard of the
training data through a ``DistributedSampler``, and sums the validation counts over all processes. Only
rank 0 shows progress and writes files, so this script looks like a single-process one: it saves and
prints only where ``trainer.is_main``. Run without torchrun, it trains in one process.

``--batch-size`` is per process: the effective batch is ``nproc_per_node`` times larger.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.distributed as dist

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
    parser.add_argument("--train-blocks", type=int, default=4, help="backbone blocks that train (last_n)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate")
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (224)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per process")
    parser.add_argument("--seed", type=int, default=0, help="seeds the shuffling and the augmentation")
    parser.add_argument("--out", type=Path, default=Path("runs/ddp"))
    return parser.parse_args(argv)


def train(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Trains on every process; rank 0 saves the model and the history.

    Args:
        args: The options from `parse_args`.
        data: Dataset root with ``train/<class>/`` and ``val/<class>/`` folders.

    Returns:
        ``history`` (the same on every rank), ``world_size`` and ``is_main``.
    """
    num_classes = len([p for p in (data / "train").iterdir() if p.is_dir() and not p.name.startswith(".")])
    model = build_model(args.backbone, num_classes=num_classes, pretrained=args.pretrained)
    model.freeze(policy="last_n", n=args.train_blocks)
    loaders = image_folder_loaders(
        data, model, batch_size=args.batch_size, image_size=args.image_size, num_workers=args.workers
    )
    # The Trainer shards these loaders per process; the model starts from rank 0's weights everywhere.
    trainer = Trainer(model, epochs=args.epochs, lr=args.lr, seed=args.seed)
    history = trainer.fit(loaders)
    if trainer.is_main:
        last = history[-1]
        print(
            f"{trainer.world_size} process(es): val acc {last['val_acc']:.3f}, "
            f"{sum(row['seconds'] for row in history):.1f} s"
        )
        model.save(args.out)
        (args.out / "history.json").write_text(json.dumps(history, indent=1))
    return {"history": history, "world_size": trainer.world_size, "is_main": trainer.is_main}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the example; see the module docstring. Returns what `train` returns."""
    args = parse_args(argv)
    try:
        if not args.synthetic:
            return train(args, args.data)
        # Every process writes its own copy of the (deterministic) synthetic set: none waits for another.
        with tempfile.TemporaryDirectory(prefix=f"rank{os.environ.get('RANK', '0')}-") as tmp:
            data = make_shapes_folder(Path(tmp) / "shapes", num_classes=2, per_class={"train": 8, "val": 4})
            return train(args, data)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
