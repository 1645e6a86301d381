"""The ``transferkit`` command: train, eval, predict, list and demo.

Every subcommand is a thin layer over the library (``build_model``, the data loaders, ``Trainer``), so a
run on the command line and the same run in Python give the same model. A trained run folder holds what
``model.save`` writes (``config.json``, ``model.safetensors``) plus ``transferkit.json`` (the task, the class
names and the image size, which ``eval`` and ``predict`` read back), ``history.json`` and, when matplotlib
is installed, ``history.png`` and ``predictions.png``.

Errors are printed as one line on stderr with a non-zero exit status (1 for a failed command, 2 for bad
arguments); set ``TRANSFERKIT_DEBUG=1`` to see the traceback instead.

Examples:
    $ transferkit train --data hymenoptera_data --backbone resnet18 --freeze last_n:2 --epochs 5 --out runs/ab
    $ transferkit eval --model runs/ab --data hymenoptera_data
    $ transferkit predict --model runs/ab bee.jpg ant.jpg
    $ transferkit list backbones convnext
    $ transferkit demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from . import (
    PretrainedUnavailableError,
    __version__,
    build_model,
    list_backbones,
    list_heads,
    list_necks,
    load_model,
)
from .data import (
    DEFAULT_DATA_CONFIG,
    ClassFolder,
    SegmentationFolder,
    build_segmentation_transforms,
    build_transforms,
    image_folder_loaders,
    make_shapes_folder,
    segmentation_folder_loaders,
)
from .heads import HEADS
from .model import TransferModel
from .trainer import Trainer

__all__ = [
    "FreezeSpec",
    "build_parser",
    "evaluate_folder",
    "main",
    "parse_freeze",
    "parse_pretrained",
    "predict_files",
]

META_FILE = "transferkit.json"
HISTORY_FILE = "history.json"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
FREEZE_GRAMMAR = "all, none, last_n:K or gradual[:N[:STEP[:EVERY]]]"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEMO_MARKER = ".transferkit-demo"


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments as one line (and a pointer to ``--help``) instead of usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.prog, message)


# ------------------------------------------------------------------------------------ argument types


class FreezeSpec(NamedTuple):
    """A parsed ``--freeze``: the policy, its ``model.freeze`` keyword arguments and the text given."""

    policy: str
    kwargs: dict[str, int]
    text: str

    def apply(self, model: TransferModel) -> None:
        model.freeze(self.policy, **self.kwargs)


def parse_pretrained(text: str) -> bool | str:
    """``--pretrained``: ``true``/``false``, a local weights file, or a weights tag.

    Raises:
        argparse.ArgumentTypeError: A path with a weights suffix that does not exist.

    Examples:
        >>> parse_pretrained("false"), parse_pretrained("IMAGENET1K_V2")
        (False, 'IMAGENET1K_V2')
    """
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0", "none"):
        return False
    path = Path(text).expanduser()
    if path.is_file():
        return str(path)
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"weights file {text} does not exist; give an existing .safetensors/.pth/.pt file, "
            "true, false or a weights tag"
        )
    return text


def parse_freeze(text: str) -> FreezeSpec:
    """``--freeze``: ``all``, ``none``, ``last_n:K`` or ``gradual[:N[:STEP[:EVERY]]]`` -> `FreezeSpec`.

    The numbers are checked against the backbone (``K <= len(model.blocks)``) by ``model.freeze``.

    Raises:
        argparse.ArgumentTypeError: An unknown policy, a missing or extra number, or a non-integer.

    Examples:
        >>> parse_freeze("gradual:2:1:3")
        FreezeSpec(policy='gradual', kwargs={'n': 2, 'step': 1, 'every': 3}, text='gradual:2:1:3')
    """
    policy, *numbers = text.strip().split(":")
    names = {"all": (), "none": (), "last_n": ("n",), "gradual": ("n", "step", "every")}
    if policy not in names:
        raise argparse.ArgumentTypeError(f"unknown freeze policy {policy!r}; use {FREEZE_GRAMMAR}")
    if policy == "last_n" and len(numbers) != 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: last_n needs one number, the blocks that train, as last_n:K (e.g. last_n:4)"
        )
    if len(numbers) > len(names[policy]):
        raise argparse.ArgumentTypeError(f"{text!r} has too many numbers; use {FREEZE_GRAMMAR}")
    kwargs = {}
    for name, value in zip(names[policy], numbers):
        try:
            kwargs[name] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {name} must be a whole number, got {value!r}; use {FREEZE_GRAMMAR}"
            ) from None
    return FreezeSpec(policy, kwargs, text.strip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# ----------------------------------------------------------------------------------------- helpers


def _say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _existing_dir(path: str, flag: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder")
    return folder


def _head_task(head: str) -> str:
    return getattr(HEADS.get(head), "task", "classification")


def _mask_classes(masks: list[Path]) -> list[str]:
    """Names ``0..K-1`` for a segmentation set without ``classes.txt``; K from the largest mask index."""
    largest = 0
    for path in masks:
        with Image.open(path) as mask:
            values = np.unique(np.asarray(mask))
        values = values[values != 255]
        largest = max(largest, int(values.max()) if values.size else 0)
    return [str(i) for i in range(largest + 1)]


def _data_classes(data: Path, task: str, args: argparse.Namespace) -> list[str]:
    """Class names of a dataset folder, read before the model is built so a bad layout fails at once."""
    train = _task_loaders(data, task, None, args.batch_size, args.image_size, args.seed)["train"].dataset
    if train.classes is not None:
        return list(train.classes)
    return _mask_classes([mask for _, mask in train.samples])


def _task_loaders(
    root: Path,
    task: str,
    model: TransferModel | None,
    batch_size: int,
    image_size: int | None,
    seed: int,
    augment: bool = True,
) -> dict[str, DataLoader]:
    kwargs: dict[str, Any] = {"batch_size": batch_size, "image_size": image_size, "seed": seed}
    kwargs["augment"] = augment
    if model is None:
        kwargs["data_config"] = DEFAULT_DATA_CONFIG
    if task == "segmentation":
        return segmentation_folder_loaders(root, model, **kwargs)
    return image_folder_loaders(root, model, **kwargs)


def _load_run(folder: str) -> tuple[TransferModel, dict[str, Any]]:
    """The model in a run folder and its ``transferkit.json`` (defaults when the folder lacks one)."""
    directory = _existing_dir(folder, "--model")
    model = load_model(directory)
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["task"] = model.task
    meta.setdefault("image_size", None)
    classes = meta.get("classes") or [str(i) for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise ValueError(
            f"{meta_path} lists {len(classes)} classes but the model has {model.num_classes} outputs; "
            "the run folder is inconsistent, train again or fix the 'classes' list"
        )
    meta["classes"] = list(classes)
    return model, meta


def _image_size_text(model: TransferModel, image_size: int | None) -> str:
    size = image_size or model.data_config["input_size"][-1]
    return f"{size}px"


def _history_table(history: list[dict[str, Any]], num_blocks: int) -> str:
    keys = [k for k in ("train_loss", "val_loss", "val_acc", "val_miou") if any(k in row for row in history)]
    lines = ["epoch  blocks  " + "  ".join(f"{k:>10}" for k in keys)]
    for row in history:
        values = "  ".join(f"{row[k]:>10.4f}" if k in row else f"{'-':>10}" for k in keys)
        blocks = f"{row.get('trainable_blocks', '?')}/{num_blocks}"
        lines.append(f"{row['epoch'] + 1:>5}  {blocks:>6}  {values}")
    return "\n".join(lines)


def _best_row(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch whose weights the Trainer keeps: lowest ``val_loss`` (it restores the best by default)."""
    if all("val_loss" in row for row in history):
        return min(history, key=lambda row: row["val_loss"])
    return history[-1]


def _write_plots(
    out: Path, history: list[dict[str, Any]], model: TransferModel, loader: Any, classes: list[str]
) -> list[Path]:
    """Write ``history.png`` and ``predictions.png``; without matplotlib, say in one line how to get them."""
    from . import plots

    written = [out / "history.png", out / "predictions.png"]
    try:
        plots.require_matplotlib()
    except ImportError as err:
        _say(f"note: plots skipped: {err}")
        for stale in written:  # an earlier run's plots must not pass for this one's
            stale.unlink(missing_ok=True)
        return []
    plots.plot_history(history, written[0])
    plots.show_predictions(model, _spread(loader.dataset, 16), written[1], classes=classes)
    return written


def _spread(dataset: Dataset, count: int) -> DataLoader:
    """One batch of ``count`` samples spread evenly through ``dataset``.

    Folder datasets are ordered by class, so the first ``count`` samples would all show the same class.
    """
    step = max(1, len(dataset) // count)
    return DataLoader(Subset(dataset, range(0, len(dataset), step)[:count]), batch_size=count)


def _fit_and_save(
    model: TransferModel,
    loaders: dict[str, DataLoader],
    out: Path,
    *,
    meta: dict[str, Any],
    epochs: int,
    lr: float,
    device: str,
    seed: int,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Train, print the epoch table, save the model, its metadata, the history and the plots."""
    trainer = Trainer(model, epochs=epochs, lr=lr, device=device, seed=seed)
    started = time.perf_counter()
    history = trainer.fit(loaders)
    elapsed = time.perf_counter() - started
    _say("", _history_table(history, len(model.blocks)))
    best = _best_row(history)
    if "val_loss" in best:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
        kept = f"kept the weights of epoch {best['epoch'] + 1} (lowest val_loss): {metrics}"
        _say(f"trained {_count(len(history), 'epoch')} in {elapsed:.0f}s; {kept}")
    else:
        _say(
            f"trained {_count(len(history), 'epoch')} in {elapsed:.0f}s (no val split: kept the last weights)"
        )
    out.mkdir(parents=True, exist_ok=True)
    model.save(out)
    meta = {
        **meta,
        "best_epoch": best["epoch"],
        "metrics": {k: v for k, v in best.items() if k.startswith("val_")},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / HISTORY_FILE).write_text(json.dumps(history, indent=2) + "\n")
    plots = _write_plots(out, history, model, loaders.get("val", loaders["train"]), meta["classes"])
    return history, plots


def _describe_data(loaders: dict[str, DataLoader], classes: list[str]) -> str:
    sizes = ", ".join(f"{len(loader.dataset)} {split}" for split, loader in loaders.items())
    return f"{sizes} images, {len(classes)} classes ({', '.join(classes)})"


# ------------------------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    data = _existing_dir(args.data, "--data")
    task = _head_task(args.head)
    classes = _data_classes(data, task, args)
    torch.manual_seed(args.seed)
    try:
        model = build_model(
            args.backbone,
            neck=args.neck,
            head=args.head,
            num_classes=len(classes),
            pretrained=args.pretrained,
        )
    except PretrainedUnavailableError as err:
        raise PretrainedUnavailableError(
            f"{err} On the command line: --pretrained PATH or --pretrained false."
        ) from err
    args.freeze.apply(model)
    loaders = _task_loaders(data, task, model, args.batch_size, args.image_size, args.seed)
    _say(
        f"transferkit train: {model.config['backbone']} + {args.neck} neck + {args.head} head ({task}), "
        f"pretrained={args.pretrained}, {_image_size_text(model, args.image_size)}",
        f"data: {data}: {_describe_data(loaders, classes)}",
        f"freeze: {args.freeze.text} ({len(model.trainable_blocks)} of {len(model.blocks)} backbone blocks "
        "train at the start)",
        model.freeze_summary(),
    )
    meta = {
        "task": task,
        "classes": list(classes),
        "image_size": args.image_size,
        "data": str(data.resolve()),
        "freeze": args.freeze.text,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "transferkit_version": __version__,
    }
    out = Path(args.out)
    _, plots = _fit_and_save(
        model, loaders, out, meta=meta, epochs=args.epochs, lr=args.lr, device=args.device, seed=args.seed
    )
    files = ["config.json", "model.safetensors", META_FILE, HISTORY_FILE, *(p.name for p in plots)]
    _say(f"saved to {out}/: {', '.join(files)}")
    return 0


# -------------------------------------------------------------------------------------------- eval


def _eval_split(data: Path, split: str | None) -> Path:
    """``data/<split>`` (default ``val``); a folder without a train/ subfolder may be the split itself."""
    if (data / (split or "val")).is_dir():
        return data / (split or "val")
    if split is None and not (data / "train").is_dir():
        return data
    if split is None:
        raise FileNotFoundError(f"{data} has no val/ folder; pass --split train to evaluate the train split")
    raise FileNotFoundError(f"{data / split}: no such folder")


def _class_folder(split_dir: Path, classes: list[str], transform: Any) -> Dataset:
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(
            f"{split_dir} has class folders {unknown} that the model does not know (its classes: {classes}); "
            "evaluate on folders named after the model's classes"
        )
    return ClassFolder(split_dir, transform, classes=classes)


def evaluate_folder(
    model: TransferModel,
    meta: dict[str, Any],
    split_dir: Path,
    *,
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[dict[str, float], int]:
    """Loss and metrics of ``model`` on one split folder, with the model's eval transforms and classes.

    Args:
        model: The trained model.
        meta: Its run metadata (``task``, ``classes``, ``image_size``), as ``transferkit.json`` holds it.
        split_dir: ``<class>/*.jpg`` folders (classification) or ``images/`` + ``masks/`` (segmentation).
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Returns:
        ``Trainer.evaluate``'s metrics (``loss``, ``acc``, and ``miou`` for segmentation) and the image count.

    Raises:
        ValueError: The folder has classes the model does not know.

    Examples:
        >>> evaluate_folder(model, meta, Path("hymenoptera_data/val"))  # doctest: +SKIP
        ({'loss': 0.2011, 'acc': 0.9412}, 153)
    """
    if meta["task"] == "segmentation":
        transform = build_segmentation_transforms(model.data_config, False, meta["image_size"])
        dataset: Dataset = SegmentationFolder(split_dir, transform, classes=meta["classes"])
    else:
        transform = build_transforms(model.data_config, False, meta["image_size"])
        dataset = _class_folder(split_dir, meta["classes"], transform)
    loader = DataLoader(dataset, batch_size=batch_size)
    return Trainer(model, device=device).evaluate(loader), len(dataset)


def _metric_lines(metrics: dict[str, float]) -> list[str]:
    labels = {"loss": "loss", "acc": "accuracy", "miou": "mIoU", "top5": "top-5 accuracy"}
    order = ["loss", "miou", "acc", "top5"]
    keys = [k for k in order if k in metrics] + [k for k in metrics if k not in order]
    label_of = {k: labels.get(k, k) for k in keys}
    if "miou" in metrics:
        label_of["acc"] = "pixel accuracy"
    width = max(len(v) for v in label_of.values())
    return [f"{label_of[k]:<{width}}  {metrics[k]:.4f}" for k in keys]


def _cmd_eval(args: argparse.Namespace) -> int:
    model, meta = _load_run(args.model)
    split_dir = _eval_split(_existing_dir(args.data, "--data"), args.split)
    metrics, count = evaluate_folder(model, meta, split_dir, batch_size=args.batch_size, device=args.device)
    _say(f"{split_dir}: {count} images, {len(meta['classes'])} classes", *_metric_lines(metrics))
    return 0


# ----------------------------------------------------------------------------------------- predict


def _image_files(paths: Sequence[str]) -> list[Path]:
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
    """Image files through the model's evaluation transform (segmentation: resized whole, never cropped)."""

    def __init__(self, files: Sequence[Path], model: TransferModel, meta: dict[str, Any]) -> None:
        self.files = list(files)
        if meta["task"] == "segmentation":
            self.pair = build_segmentation_transforms(model.data_config, False, meta["image_size"])
        else:
            self.single = build_transforms(model.data_config, False, meta["image_size"])
        self.task = meta["task"]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise OSError(f"cannot read image {path}: {err}") from err
        if self.task == "segmentation":
            return self.pair(image, Image.new("L", image.size))[0]  # the blank mask only fills the pair
        return self.single(image)


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
        model: The trained model.
        meta: Its run metadata (``task``, ``classes``, ``image_size``), as ``transferkit.json`` holds it.
        files: Image paths.
        top_k: Classes per line.
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Examples:
        >>> predict_files(model, meta, [Path("bee.jpg")], top_k=2)  # doctest: +SKIP
        ['bee.jpg: bees 0.968  ants 0.032']
    """
    loader = DataLoader(_ImageFiles(files, model, meta), batch_size=batch_size)
    logits = Trainer(model, device=device, progress=False).predict(loader)
    classes = meta["classes"]
    k = min(top_k, len(classes))
    if meta["task"] == "segmentation":
        counts = torch.stack([torch.bincount(p.flatten(), minlength=len(classes)) for p in logits.argmax(1)])
        scores = counts.float() / counts.sum(1, keepdim=True)
        unit = " of pixels"
    else:
        scores, unit = logits.softmax(1), ""
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


# -------------------------------------------------------------------------------------------- list


def _cmd_list(args: argparse.Namespace) -> int:
    pattern = args.pattern
    if not any(char in pattern for char in "*?["):
        pattern = f"*{pattern}*"  # a plain word matches anywhere in the name
    lister: Callable[[str], list[str]] = {
        "backbones": list_backbones,
        "necks": list_necks,
        "heads": list_heads,
    }[args.kind]
    names = lister(pattern)
    if not names:
        raise LookupError(
            f"no {args.kind} match {args.pattern!r}; run 'transferkit list {args.kind}' for all"
        )
    _say(*names)
    return 0


# -------------------------------------------------------------------------------------------- demo


class DemoSettings(NamedTuple):
    """What ``transferkit demo`` generates and how it trains (``--quick`` uses the small set)."""

    per_class: dict[str, int]
    image_size: int
    epochs: int
    freeze: str
    lr: float = 2e-3
    batch_size: int = 32


DEMO = {
    "full": DemoSettings({"train": 200, "val": 50}, image_size=48, epochs=12, freeze="gradual:5:2:1"),
    "quick": DemoSettings({"train": 4, "val": 2}, image_size=32, epochs=1, freeze="gradual:5:2:1"),
}
DEMO_CLASSES = 3
DEMO_BACKBONE = "resnet18"


def _fresh_demo_data(folder: Path) -> None:
    """Remove the data a previous demo wrote there; refuse to touch a folder the demo did not make."""
    if not folder.exists():
        return
    if not (folder / DEMO_MARKER).is_file():
        raise FileExistsError(
            f"{folder} exists and was not written by transferkit demo; move it away or pass --out NEW_FOLDER"
        )
    shutil.rmtree(folder)


def _unfrozen_at(history: list[dict[str, Any]]) -> list[int]:
    """1-based epochs that train more blocks than the epoch before."""
    pairs = zip(history, history[1:])
    return [row["epoch"] + 1 for prev, row in pairs if row["trainable_blocks"] > prev["trainable_blocks"]]


def _cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    settings = DEMO["quick" if args.quick else "full"]
    epochs = args.epochs or settings.epochs
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder")
    data = out / "data"
    where = "GPU" if torch.cuda.is_available() else "CPU"
    _say(
        f"transferkit demo: fine-tune {DEMO_BACKBONE} on synthetic shapes, offline, on the {where}; "
        f"everything goes to {out}/",
        "",
        f"[1/5] data: writing a {DEMO_CLASSES}-class image folder of shapes ({settings.image_size}px JPEGs, "
        f"{settings.per_class['train']} train + {settings.per_class['val']} val per class) to {data}/",
    )
    _fresh_demo_data(data)
    make_shapes_folder(
        data,
        num_classes=DEMO_CLASSES,
        per_class=settings.per_class,
        image_size=settings.image_size,
        seed=args.seed,
    )
    (data / DEMO_MARKER).write_text("written by transferkit demo; the next demo deletes and rewrites it\n")

    freeze = parse_freeze(settings.freeze)
    torch.manual_seed(args.seed)
    model = build_model(DEMO_BACKBONE, num_classes=DEMO_CLASSES, pretrained=False)
    freeze.apply(model)
    # The default training crops (down to 35% of the image, made for photos and pretrained weights) cut
    # these small centred shapes apart, and a randomly initialised network then needs several times more
    # epochs; so the demo trains on the whole images, with the deterministic eval transform.
    loaders = _task_loaders(
        data, "classification", model, settings.batch_size, settings.image_size, args.seed, augment=False
    )
    classes = loaders["train"].dataset.classes
    n, step, every = (freeze.kwargs[k] for k in ("n", "step", "every"))
    _say(
        "",
        f"[2/5] model: {DEMO_BACKBONE} backbone (random init, pretrained=False: nothing is downloaded) "
        "+ identity neck + linear head",
        f"      freeze {freeze.text}: the last {n} of {len(model.blocks)} backbone blocks train from the "
        f"start and {step} more unfreeze every {_count(every, 'epoch')}; the head always trains:",
        model.freeze_summary(),
        "",
        f"[3/5] training {_count(epochs, 'epoch')} on {_describe_data(loaders, classes)}",
    )
    meta = {
        "task": "classification",
        "classes": list(classes),
        "image_size": settings.image_size,
        "data": str(data.resolve()),
        "freeze": freeze.text,
        "epochs": epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "transferkit_version": __version__,
    }
    history, plots = _fit_and_save(
        model, loaders, out, meta=meta, epochs=epochs, lr=settings.lr, device="auto", seed=args.seed
    )

    reloaded, meta = _load_run(str(out))
    metrics, count = evaluate_folder(reloaded, meta, data / "val")
    chance = 1 / DEMO_CLASSES
    _say(
        "",
        f"[4/5] evaluation of the saved model, reloaded from {out}/, on the {count} val images "
        f"(chance accuracy {chance:.2f}):",
        *(f"      {line}" for line in _metric_lines(metrics)),
    )
    samples = [sorted((data / "val" / name).iterdir())[0] for name in classes]
    _say(
        "",
        "[5/5] predictions for one val image of each class (top classes with probabilities):",
        *(f"      {line}" for line in predict_files(reloaded, meta, samples)),
    )
    unfrozen = ", ".join(map(str, _unfrozen_at(history))) or "none"
    files = {
        "history.png": "loss and accuracy per epoch; dashed lines where blocks unfroze",
        "predictions.png": "val images titled with predicted vs true class",
        "history.json": "the numbers behind the curves",
    }
    if not plots:
        del files["history.png"], files["predictions.png"]
    places = {str(out / name): text for name, text in files.items()}
    places[f"{out}/"] = "the model: config.json + model.safetensors, transferkit.json (classes, image size)"
    places[f"{data}/"] = "the generated images"
    width = max(map(len, places))
    _say(
        "",
        f"What happened: {_count(len(history), 'epoch')}, {time.perf_counter() - started:.0f}s in all; "
        f"val accuracy {metrics['acc']:.2f} (chance {chance:.2f}); more backbone blocks unfroze at epochs "
        f"{unfrozen}.",
        "Where to look:",
        *(f"  {place:<{width}}  {text}" for place, text in places.items()),
        "Next steps:",
        f"  transferkit eval --model {out} --data {data}",
        f"  transferkit predict --model {out} {data / 'val' / classes[0]}",
        "  transferkit train --data YOUR_FOLDER --backbone resnet18 --freeze last_n:2 --out runs/mine",
        "      YOUR_FOLDER holds train/<class>/*.jpg and val/<class>/*.jpg, like the ants/bees set; with",
        "      internet the ImageNet weights download (--pretrained true, the default), or use a local file",
        "      with --pretrained resnet18.pth",
        "  transferkit list backbones convnext",
    )
    return 0


# -------------------------------------------------------------------------------------------- main


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1..."
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``transferkit`` argument parser (subcommands train, eval, predict, list, demo).

    Examples:
        >>> args = build_parser().parse_args(["list", "heads"])
        >>> args.kind, args.pattern
        ('heads', '*')
    """
    parser = _Parser(prog="transferkit", description="Transfer learning on images from the command line.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="fine-tune a backbone on an image folder")
    train.add_argument(
        "--data", required=True, help="root/train/<class>/*.jpg (+ root/val/...); masks for fcn"
    )
    train.add_argument(
        "--backbone", required=True, help="e.g. resnet18, timm/convnext_tiny (transferkit list)"
    )
    train.add_argument("--neck", default="identity", help="identity (default) or fpn_lite")
    train.add_argument(
        "--head", default="linear", help="linear (classification, default) or fcn (segmentation)"
    )
    train.add_argument(
        "--pretrained",
        type=parse_pretrained,
        default=True,
        help="true (default), false, a weights tag or a file",
    )
    train.add_argument(
        "--freeze", type=parse_freeze, default=parse_freeze("none"), help=f"{FREEZE_GRAMMAR} (default: none)"
    )
    train.add_argument("--epochs", type=_positive_int, default=10)
    train.add_argument("--lr", type=_positive_float, default=1e-3, help="head learning rate (default 1e-3)")
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--image-size", type=_positive_int, default=None, help="default: the backbone's size")
    train.add_argument("--out", default="runs/transferkit", help="run folder (default runs/transferkit)")
    train.add_argument("--seed", type=int, default=0)
    _add_device(train)
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="loss and accuracy (or mIoU) of a trained model on a folder")
    evaluate.add_argument("--model", required=True, help="a run folder written by transferkit train")
    evaluate.add_argument("--data", required=True, help="a dataset root (its val/ is used) or a split folder")
    evaluate.add_argument("--split", default=None, help="the split folder under --data (default val)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32)
    _add_device(evaluate)
    evaluate.set_defaults(func=_cmd_eval)

    predict = commands.add_parser("predict", help="top classes of images with probabilities")
    predict.add_argument("--model", required=True, help="a run folder written by transferkit train")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.add_argument("--batch-size", type=_positive_int, default=32)
    _add_device(predict)
    predict.set_defaults(func=_cmd_predict)

    listing = commands.add_parser("list", help="registered backbones, necks or heads")
    listing.add_argument("kind", choices=("backbones", "necks", "heads"))
    listing.add_argument(
        "pattern", nargs="?", default="*", help="fnmatch pattern; a plain word matches anywhere"
    )
    listing.set_defaults(func=_cmd_list)

    demo = commands.add_parser(
        "demo", help="offline end-to-end demo on synthetic shapes (about a minute on 2 CPU cores)"
    )
    demo.add_argument("--out", default="transferkit-demo", help="folder for data, model and plots")
    demo.add_argument("--epochs", type=_positive_int, default=None, help=f"default {DEMO['full'].epochs}")
    demo.add_argument("--quick", action="store_true", help="a few images, 1 epoch: a smoke test in seconds")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``transferkit`` command; returns the exit status (0 ok, 1 failed, 2 bad arguments).

    Examples:
        >>> main(["list", "heads"])  # doctest: +SKIP
        fcn
        linear
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"{err.prog}: error: {_one_line(err)} (see {err.prog} --help)", file=sys.stderr)
        return 2
    except SystemExit as exit:  # --help and --version
        return int(exit.code or 0)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"transferkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("TRANSFERKIT_DEBUG"):
            raise
        print(f"transferkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
