"""``transferkit predict``: the top classes of image files, with probabilities, from a trained run folder.

The model's task turns its outputs into one score per class and image (for segmentation: the share of
pixels predicted as each class), so every task prints the same ranked line per image.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..model import TransferModel
from ..tasks import get_task
from ..training import Trainer
from .options import _add_device, _positive_int
from .runs import _load_run, _say

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand to ``commands``."""
    predict = commands.add_parser("predict", help="top classes of images with probabilities")
    predict.add_argument("--model", required=True, help="a run folder written by transferkit train")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.add_argument("--batch-size", type=_positive_int, default=32)
    _add_device(predict)
    predict.set_defaults(func=_cmd_predict)


def _image_files(paths: Sequence[str]) -> list[Path]:
    """The files given, with each folder replaced by the image files under it, sorted."""
    files: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{text} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{text}: no such image file")
    return files


class _ImageFiles(Dataset):
    """Image files through an evaluation transform; an unreadable file raises `OSError` naming it."""

    def __init__(self, files: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise OSError(f"cannot read image {path}: {err}") from err
        return self.transform(image)


def predict_files(
    model: TransferModel,
    meta: dict[str, Any],
    files: Sequence[Path],
    *,
    top_k: int = 3,
    batch_size: int = 32,
    device: str = "auto",
) -> list[str]:
    """One line per image: its top classes with probabilities (segmentation: predicted pixel shares).

    Args:
        model: The trained model; ``model.task`` says how its outputs become class scores.
        meta: Its run metadata (``task``, ``classes``, ``image_size``), as ``transferkit.json`` holds it.
        files: Image paths.
        top_k: Classes per line.
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Examples:
        >>> predict_files(model, meta, [Path("bee.jpg")], top_k=2)  # doctest: +SKIP
        ['bee.jpg: bees 0.968  ants 0.032']
    """
    task = get_task(model.task)
    dataset = _ImageFiles(files, task.image_transform(model, meta["image_size"]))
    logits = Trainer(model, device=device, progress=False).predict(DataLoader(dataset, batch_size=batch_size))
    scores, unit = task.class_scores(logits)
    classes = meta["classes"]
    k = min(top_k, len(classes))
    lines = []
    for path, row in zip(files, scores):
        values, indices = row.topk(k)
        ranked = "  ".join(f"{classes[i]} {v:.3f}" for v, i in zip(values.tolist(), indices.tolist()))
        lines.append(f"{path}: {ranked}{unit}")
    return lines


def _cmd_predict(args: argparse.Namespace) -> int:
    model, meta = _load_run(args.model)
    files = _image_files(args.images)
    _say(*predict_files(model, meta, files, top_k=args.top_k, batch_size=args.batch_size, device=args.device))
    return 0
