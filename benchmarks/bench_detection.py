"""Benchmark: the detection heads side by side on handwritten digits pasted onto photographs (CPU).

Every head (``yolo``, ``fcos``, ``retinanet``, ``fasterrcnn``, ``ssdlite``) is built as
``build_model(backbone, neck=..., head=H, num_classes=10, pretrained=...)`` on the same backbone, by
default EfficientNet-Lite0 with its real ImageNet weights (`real_weights`), and trained by the Trainer
with its defaults (AdamW, cosine schedule; the pretrained backbone's BatchNorm frozen) on
`digit_scenes`: MNIST digits at random scales and places on windows of real photographs, ten classes,
boxes from each digit's ink; training and validation share no digit, no photo column and no seed.

Two comparisons, from the same runs where they coincide:

- **equal epochs**: every head trains ``--epochs`` epochs on the same images.
- **equal wall time**: every head trains for a budget of seconds: ``--seconds``, or by default the
  training time of the fastest head's equal-epochs run. A head gets the whole epochs that fit in the
  budget at the speed it showed in its equal-epochs run (at least one), with its cosine schedule over
  those epochs; where that is ``--epochs``, its equal-epochs run is reused.

Reported per head (the mean over ``--seeds``, with the standard deviation from two seeds up): COCO
mAP@[.5:.95] (``val_map``) and mAP@0.5 (``val_map_50``) of the weights the Trainer keeps (its best
``val_map`` epoch), training images per second (training steps only, validation excluded), CPU
inference in eval mode at batch 1 (median ms per image over ``--time-images`` val images, after a
warm-up), and the same through ONNX Runtime for a ``model.export("x.onnx")`` file, or "n/a" (with the
reason below the table) where the export raises `transferkit.ExportError` or onnxruntime is missing.

    python benchmarks/bench_detection.py                          # every head, 10-15 min on 2 cores
    python benchmarks/bench_detection.py --heads fcos,yolo --epochs 3 --train 256
    python benchmarks/bench_detection.py --backbone resnet18      # random weights, offline
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digit_scenes  # noqa: E402
import real_weights  # noqa: E402

from transferkit import ExportError, Trainer, build_model  # noqa: E402
from transferkit.data import build_detection_transforms  # noqa: E402
from transferkit.tasks import get_task  # noqa: E402

HEADS = ("yolo", "fcos", "retinanet", "fasterrcnn", "ssdlite")
DEFAULT_NECK = "fpn_lite"
# SSDLite reads the backbone's own levels, as torchvision's ssdlite320 does (it takes levels of any
# widths); on fpn_lite's 128-channel levels its training steps ran three times slower here (96 px).
HEAD_NECKS = {"ssdlite": "identity"}
# torchvision's Faster R-CNN sizes (2000 / 1000 proposals, 512 sampled RoIs per image, a 1024-wide RoI
# MLP) are made for 800 px COCO images: at 96 px on two cores they train at about 1 image/s (RoIAlign's
# backward and the MLP take three quarters of the step) and infer in over 100 ms. These keep its two
# stages and shrink the RoI part to what one to three objects an image need.
HEAD_KWARGS: dict[str, dict[str, Any]] = {
    "fasterrcnn": {"box_batch_size_per_image": 128, "representation_size": 256, "proposals": (300, 100)},
}
VAL_SEED = 0  # the validation images are the same for every --seeds value


class _Clock:
    """Times each epoch's training steps (from its start to its last batch) and prints a line per epoch."""

    def __init__(self, label: str, images: int) -> None:
        self.label, self.images = label, images
        self.seconds: list[float] = []
        self.started = self.last = 0.0

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.started = self.last = time.perf_counter()

    def on_batch_end(self, trainer: Trainer) -> None:
        self.last = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.seconds.append(self.last - self.started)
        row = trainer.history[-1]
        print(
            f"  {self.label} epoch {len(self.seconds)}/{trainer.epochs}: loss {row['train_loss']:.3f}, "
            f"val mAP {row['val_map']:.3f}, mAP@0.5 {row['val_map_50']:.3f}, "
            f"{self.images / self.seconds[-1]:.1f} img/s",
            flush=True,
        )


# ------------------------------------------------------------------------------------------ the model
def backbone_source(args: argparse.Namespace, weights_dir: Path) -> tuple[str, bool | str]:
    """The ``build_model`` backbone name and ``pretrained`` value for ``--backbone`` / ``--pretrained``.

    A key of `real_weights.BACKBONES` takes its package's ImageNet weights unless ``--pretrained`` says
    otherwise; any other backbone name is built with ``--pretrained`` (default false: offline).
    """
    if args.backbone in real_weights.BACKBONES:
        arch = real_weights.BACKBONES[args.backbone].arch
        if args.pretrained is None:
            return arch, str(real_weights.weights_file(weights_dir, args.backbone))
        return arch, args.pretrained
    return args.backbone, False if args.pretrained is None else args.pretrained


def build(args: argparse.Namespace, head: str, seed: int, source: tuple[str, bool | str]) -> nn.Module:
    """The head's model on the benchmark's backbone and neck, initialised by ``seed``."""
    torch.manual_seed(seed)
    arch, pretrained = source
    return build_model(
        arch, neck=neck_of(args, head), head=head, num_classes=digit_scenes.CLASSES, pretrained=pretrained,
        head_kwargs=head_kwargs(args, head),
    )  # fmt: skip


def neck_of(args: argparse.Namespace, head: str) -> str:
    """``--neck``, or with ``auto`` the head's own neck (`HEAD_NECKS`, else `DEFAULT_NECK`)."""
    return HEAD_NECKS.get(head, DEFAULT_NECK) if args.neck == "auto" else args.neck


def head_kwargs(args: argparse.Namespace, head: str) -> dict[str, Any]:
    """`HEAD_KWARGS` for ``head`` (none with ``--head-defaults``), updated by ``--head-kwargs``."""
    own = {} if args.head_defaults else dict(HEAD_KWARGS.get(head, {}))
    return own | args.head_kwargs.get(head, {})


# --------------------------------------------------------------------------------------------- the data
def loaders(
    args: argparse.Namespace, model: nn.Module, train: list[Any], val: list[Any], seed: int
) -> dict[str, DataLoader]:
    """Loaders over rendered samples with the model's detection transforms (training: colour jitter, no
    flip: a mirrored digit is another digit, or none)."""
    config, collate = model.data_config, get_task("detection").collate_fn
    augment = build_detection_transforms(config, train=True, image_size=args.size, flip=False)
    plain = build_detection_transforms(config, train=False, image_size=args.size)
    return {
        "train": DataLoader(
            digit_scenes.DigitScenes(train, augment), batch_size=args.batch_size, shuffle=True,
            collate_fn=collate, generator=torch.Generator().manual_seed(seed),
        ),
        "val": DataLoader(digit_scenes.DigitScenes(val, plain), batch_size=32, collate_fn=collate),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ the timings
def cpu_ms(model: nn.Module, images: Sequence[torch.Tensor], warmup: int = 2) -> float:
    """Median milliseconds of ``model`` (eval mode, batch 1) over ``images`` ``[3, H, W]``."""
    model.eval()
    times = []
    with torch.inference_mode():
        for image in [*images[:warmup], *images]:
            started = time.perf_counter()
            model(image[None])
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[warmup:])


def onnx_ms(
    model: Any, images: Sequence[torch.Tensor], path: Path, threads: int, warmup: int = 2
) -> float | str:
    """Median milliseconds per image of ``model.export(path)`` (an ``.onnx`` file) in ONNX Runtime at
    batch 1, or why not: the exporter's `ExportError`, or onnxruntime missing."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    try:
        path = model.export(path)
    except (ExportError, ImportError) as err:
        reason = " ".join(str(err).split())
        return f"{type(err).__name__}: {reason[:150]}{'...' if len(reason) > 150 else ''}"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    times = []
    for image in [*images[:warmup], *images]:
        feed = {name: image[None].numpy()}
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[warmup:])


# ---------------------------------------------------------------------------------------------- the runs
def train_one(
    args: argparse.Namespace, head: str, seed: int, epochs: int, data: dict[str, Any]
) -> tuple[dict[str, Any], nn.Module, dict[str, DataLoader]]:
    """Train ``head`` for ``epochs`` on ``data`` (``{"source", "train", "val"}``); returns its result
    (the kept epoch's metrics, training seconds and images/s), the model and its loaders."""
    model = build(args, head, seed, data["source"])
    feeds = loaders(args, model, data["train"], data["val"], seed)
    clock = _Clock(f"{head} seed {seed}", len(data["train"]))
    trainer = Trainer(
        model, epochs=epochs, lr=args.lr, device="cpu", progress=False, seed=seed, callbacks=[clock]
    )
    history = trainer.fit(feeds)
    kept = max(history, key=lambda row: row["val_map"])
    seconds = sum(clock.seconds)
    result = {
        "head": head, "seed": seed, "epochs": epochs, "train_seconds": seconds,
        "images_per_s": epochs * len(data["train"]) / seconds, "map": kept["val_map"],
        "map_50": kept["val_map_50"], "best_epoch": kept["epoch"] + 1,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }  # fmt: skip
    return result, model, feeds


def equal_time_epochs(runs: dict[str, list[dict[str, Any]]], epochs: int, budget: float) -> dict[str, int]:
    """Whole epochs of each head that fit in ``budget`` seconds at its measured speed (at least one).

    Examples:
        >>> runs = {"a": [{"train_seconds": 10.0}], "b": [{"train_seconds": 25.0}]}
        >>> equal_time_epochs(runs, 5, 10.0)
        {'a': 5, 'b': 2}
    """
    out = {}
    for head, results in runs.items():
        per_epoch = statistics.mean(r["train_seconds"] for r in results) / epochs
        out[head] = max(1, math.floor(budget / per_epoch + 1e-9))
    return out


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Every head at equal epochs, timed, then at equal wall time; returns ``{"epochs": rows, "time":
    rows, "budget": seconds, "notes": [...]}`` with one row per head (means over seeds)."""
    started = time.perf_counter()
    val = digit_scenes.render_split("val", args.val, size=args.size, seed=VAL_SEED)
    trains = {s: digit_scenes.render_split("train", args.train, size=args.size, seed=s) for s in args.seeds}
    print(f"rendered {args.train} train / {args.val} val images in {time.perf_counter() - started:.0f} s")
    equal: dict[str, list[dict[str, Any]]] = {head: [] for head in args.heads}
    timings: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = backbone_source(args, Path(args.weights_dir or tmp))
        for head in args.heads:
            for seed in args.seeds:
                data = {"source": source, "train": trains[seed], "val": val}
                result, model, feeds = train_one(args, head, seed, args.epochs, data)
                equal[head].append(result)
                if seed == args.seeds[0]:  # the inference times of the first seed's model
                    onnx_file = Path(tmp) / f"{head}.onnx"
                    timings[head] = _inference_times(args, model, feeds["val"].dataset, onnx_file)
                    if isinstance(timings[head]["onnx_ms"], str):
                        notes.append(f"{head}: ONNX n/a: {timings[head]['onnx_ms']}")
        budget = args.seconds or min(statistics.mean(r["train_seconds"] for r in rs) for rs in equal.values())
        timed: dict[str, list[dict[str, Any]]] = {}
        if args.equal_time:
            for head, epochs in equal_time_epochs(equal, args.epochs, budget).items():
                if epochs == args.epochs:
                    timed[head] = equal[head]
                    continue
                for seed in args.seeds:
                    data = {"source": source, "train": trains[seed], "val": val}
                    timed.setdefault(head, []).append(train_one(args, head, seed, epochs, data)[0])
    necks = {head: {"neck": neck_of(args, head)} for head in args.heads}
    rows = [_mean_row(results) | timings[head] | necks[head] for head, results in equal.items()]
    return {
        "epochs": rows,
        "time": [_mean_row(results) for results in timed.values()],
        "budget": budget,
        "notes": notes,
        "minutes": (time.perf_counter() - started) / 60,
    }


def _inference_times(args: argparse.Namespace, model: Any, val: Any, onnx_file: Path) -> dict[str, Any]:
    """``{"cpu_ms", "onnx_ms"}`` over the first ``--time-images`` val images (`cpu_ms`, `onnx_ms`)."""
    images = [val[i][0] for i in range(min(args.time_images, len(val)))]
    onnx = onnx_ms(model, images, onnx_file, args.threads) if args.onnx else "not run (--no-onnx)"
    return {"cpu_ms": cpu_ms(model, images), "onnx_ms": onnx}


def _mean_row(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One head's results over seeds: means, and ``*_sd`` standard deviations from two seeds up."""
    row = {"head": results[0]["head"], "epochs": results[0]["epochs"], "seeds": len(results)}
    for key in ("train_seconds", "images_per_s", "map", "map_50", "params_m", "best_epoch"):
        values = [r[key] for r in results]
        row[key] = statistics.mean(values)
        row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    return row


# --------------------------------------------------------------------------------------------- the table
def _value(row: dict[str, Any], key: str) -> str:
    sd = row.get(f"{key}_sd")
    return f"{row[key]:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _ms(value: float | str) -> str:
    return f"{value:.1f}" if isinstance(value, float) else "n/a"


def tables(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The two Markdown tables (equal epochs, equal wall time) and the notes, as lines."""
    lines = [
        f"### Equal epochs: {args.epochs} epoch{'s' * (args.epochs != 1)} of {args.train} images\n",
        "| head | neck | params M | train s | train img/s | val mAP | val mAP@0.5 | best epoch "
        "| CPU ms/img | ONNX ms/img |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["epochs"]:
        lines.append(
            f"| {row['head']} | {row['neck']} | {row['params_m']:.2f} | {row['train_seconds']:.0f} "
            f"| {row['images_per_s']:.1f} | {_value(row, 'map')} | {_value(row, 'map_50')} "
            f"| {row['best_epoch']:g} | {_ms(row['cpu_ms'])} | {_ms(row['onnx_ms'])} |"
        )
    if result["time"]:
        rule = "--seconds" if args.seconds else "the fastest head's equal-epochs training time"
        lines += [
            "",
            f"### Equal wall time: {result['budget']:.0f} s of training each ({rule})\n",
            "| head | epochs | train s | val mAP | val mAP@0.5 |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in result["time"]:
            lines.append(
                f"| {row['head']} | {row['epochs']} | {row['train_seconds']:.0f} | {_value(row, 'map')} "
                f"| {_value(row, 'map_50')} |"
            )
    return lines + ([""] + result["notes"] if result["notes"] else [])


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated (default {','.join(HEADS)})")
    p.add_argument(
        "--backbone", default="efficientnet_lite0",
        help=f"{', '.join(real_weights.BACKBONES)} (real ImageNet weights) or any build_model backbone name",
    )  # fmt: skip
    p.add_argument("--pretrained", default=None, help="true, false or a file (default: see --backbone)")
    p.add_argument("--neck", default="auto", help=f"auto ({DEFAULT_NECK}, identity for ssdlite) or a neck")
    p.add_argument("--head-defaults", action="store_true", help="build every head with its own defaults")
    p.add_argument(
        "--head-kwargs", type=json.loads, default={},
        help='JSON {head: head_kwargs} over the benchmark\'s, e.g. \'{"retinanet": {"anchor_scale": 2}}\'',
    )  # fmt: skip
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--train", type=int, default=384, help="training images per seed")
    p.add_argument("--val", type=int, default=160, help="validation images (the same for every seed)")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the equal-epochs comparison")
    p.add_argument("--seconds", type=float, default=None, help="the equal-time budget (default: see above)")
    p.add_argument("--equal-time", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the Trainer's)")
    p.add_argument("--seeds", default="0", help="comma-separated: the training images and initialisation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time-images", type=int, default=20, help="val images the inference times run over")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True, help="time ONNX Runtime")
    p.add_argument("--weights-dir", default=None, help="keep the converted weights (default: a temp dir)")
    args = p.parse_args(argv)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.pretrained is not None:
        lowered = args.pretrained.lower()
        args.pretrained = {"true": True, "false": False}.get(lowered, args.pretrained)
    unknown = sorted(set(args.heads) - set(HEADS))
    if unknown:
        p.error(f"unknown heads {', '.join(unknown)}; choose from {', '.join(HEADS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison and print its tables; returns what `compare` returns."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    print(
        f"detection heads on {args.backbone} (pretrained: {args.pretrained or 'default'}), digits on photos: "
        f"{args.size} px, {args.train} train / {args.val} val images, batch {args.batch_size}, "
        f"{args.epochs} epochs, seeds {args.seeds}, {args.threads} threads; torch {torch.__version__}",
        flush=True,
    )
    result = compare(args)
    print("", *tables(result, args), f"\n{result['minutes']:.1f} min in all", sep="\n")
    return result


if __name__ == "__main__":
    main()
