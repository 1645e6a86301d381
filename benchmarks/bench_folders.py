"""Benchmark: training from a folder of JPEGs, the tutorial's loop against transferkit's folder pipeline.

A generated folder of real-size JPEGs (two classes, 400-640 px wide, as the ants/bees tutorial's photos)
is trained on by:

- ``tutorial``: torchvision ``ImageFolder`` + PIL + the tutorial's transforms (``RandomResizedCrop(224)``
  and a flip for training, ``Resize(256)`` + ``CenterCrop(224)`` otherwise), a DataLoader with
  ``--tutorial-workers`` workers (what a user sets on this machine: one per core), and the tutorial-style
  ``train_model`` of ``bench_trainers.py``;
- ``transferkit``: ``image_folder_loaders`` with its defaults (workers from the machine, reduced-scale JPEG
  decoding) + ``Trainer``;
- ``transferkit+cache``: the same with ``cache_images=True`` (augmenting workloads) or
  ``Trainer(cache_features=True)`` (``folder_extract``);
- ``limit``: the ``Trainer`` on the training images already decoded, resized and centre-cropped into
  tensors in memory (``cache_features=True`` for ``folder_extract``): what the workload costs with no data
  pipeline at all, the floor a pipeline can at best reach by hiding all of its cost.

Workloads: ``folder_finetune`` (everything trains, augmenting, 2 epochs), ``folder_extract`` (frozen
backbone, no augmentation, 5 epochs), ``folder_last_n`` (the last 2 blocks train, augmenting, 3 epochs);
resnet18 from random weights (no download), AdamW with a per-step cosine schedule, fp32 on the CPU.

Every (repetition, workload, runner) runs in a fresh process, interleaved as in ``bench_trainers.py``. The
timed span starts before the datasets are built (folder scans, the image cache's decoding) and ends when
training returns; the limit times training only. Afterwards each run scores a held-out split of other
photos (the same evaluation for all). Memory: the process's peak RSS, the largest DataLoader worker's
peak, and the image cache's decoded pixels (``loader.dataset.cache.memory_bytes``).

Run ``python benchmarks/bench_folders.py --help`` for the flags; ``benchmarks/README.md`` has the command
and the latest table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainers import (  # noqa: E402
    LR,
    WEIGHT_DECAY,
    _cosine,
    _peak_rss_mb,
    _torchvision_resnet18,
    names,
    train_model,
)

WORKLOADS = ("folder_finetune", "folder_extract", "folder_last_n")
RUNNERS = ("tutorial", "transferkit", "transferkit+cache", "limit")
CLASSES = ("ants", "bees")
POLICY = {"folder_finetune": "none", "folder_extract": "extract", "folder_last_n": "last_n"}
AUGMENTS = {"folder_finetune": True, "folder_extract": False, "folder_last_n": True}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------- the photos
def _photo(width: int, height: int, label: int, rng: Any) -> Any:
    """A photo-like JPEG source: class colours and shapes over noisy texture (JPEG work like a photo's).

    Class 0: a warm brown ground with dark elongated blobs; class 1: a green-yellow ground with
    striped yellow-black ovals. Brightness, positions and sizes vary per image.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.3, 3)
    ground = np.array([[150, 100, 70], [110, 150, 60]][label], dtype=np.float64) * rng.uniform(0.7, 1.2)
    waves = np.stack(
        [np.sin(x / rng.uniform(20, 60) + p) * np.cos(y / rng.uniform(20, 60)) for p in phase], -1
    )
    pixels = ground + 40 * waves + rng.normal(0, 14, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.04, 0.12) * width, rng.uniform(0.02, 0.06) * width
        if label == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(40, 25, 20))
        else:
            for k in range(5):  # stripes across the oval
                x0 = cx - rx + 2 * rx * k / 5
                colour = (230, 190, 30) if k % 2 == 0 else (30, 25, 15)
                draw.ellipse([x0, cy - ry, x0 + 2 * rx / 5 + 2, cy + ry], fill=colour)
    return image


def make_photo_folder(root: Path, per_class: int, seed: int) -> Path:
    """``root/<class>/*.jpg``: ``per_class`` photos per class, 400-640 px wide, aspect 0.65-0.8."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width = int(rng.integers(400, 641))
            height = int(width * rng.uniform(0.65, 0.8))
            _photo(width, height, label, rng).save(root / name / f"{i:04d}.jpg", quality=90)
    return root


def _tutorial_transforms(train: bool, size: int) -> Any:
    from torchvision import transforms

    if train:
        geometry = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize(size * 8 // 7), transforms.CenterCrop(size)]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def _render_limit(train_dir: Path, path: Path, size: int) -> None:
    """The training photos decoded, resized and centre-cropped once: the limit's in-memory tensors."""
    import torch
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(train_dir), transform=_tutorial_transforms(False, size))
    images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
    torch.save({"images": torch.stack(images), "labels": torch.as_tensor(labels)}, path)


# ----------------------------------------------------------------------------------------- children
def _model(runner: str, policy: str) -> Any:
    import torch

    if runner == "tutorial":
        model = _torchvision_resnet18(policy)
        model.fc = torch.nn.Linear(model.fc.in_features, len(CLASSES))
        return model
    from transferkit import build_model

    model = build_model("resnet18", num_classes=len(CLASSES), pretrained=False)
    if policy == "extract":
        model.freeze("all")
    elif policy == "last_n":
        model.freeze("last_n", n=2)
    return model


def _heldout_accuracy(model: Any, folder: str, size: int, batch_size: int) -> float:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    loader = DataLoader(ImageFolder(folder, _tutorial_transforms(False, size)), batch_size=batch_size)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(loader.dataset)


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # workers that have exited


def _trainer(model: Any, epochs: int, cache_features: bool) -> Any:
    from transferkit import Trainer

    return Trainer(
        model, epochs=epochs, lr=LR, weight_decay=WEIGHT_DECAY, progress=False, cache_features=cache_features
    )


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Runs one (workload, runner) job in this process and returns its measurements."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    loaders = None
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    workload, runner, epochs = job["workload"], job["runner"], job["epochs"]
    policy, augment = POLICY[workload], AUGMENTS[workload]
    model = _model(runner, policy)
    cache_mb = 0.0
    feature_cache = runner in ("transferkit+cache", "limit") and policy == "extract"
    if runner == "limit":
        data = torch.load(job["limit_data"], weights_only=True)
        loader = DataLoader(
            TensorDataset(data["images"], data["labels"]),
            batch_size=job["batch_size"],
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        trainer = _trainer(model, epochs, feature_cache)
        start = time.perf_counter()
        history = trainer.fit(loader)
        loss = history[-1]["train_loss"]
    elif runner == "tutorial":
        from torchvision.datasets import ImageFolder

        start = time.perf_counter()
        dataset = ImageFolder(job["train_dir"], _tutorial_transforms(augment, job["size"]))
        loader = DataLoader(
            dataset, batch_size=job["batch_size"], shuffle=True, num_workers=job["tutorial_workers"]
        )
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(epochs * len(loader)))
        criterion = torch.nn.CrossEntropyLoss()
        loss = train_model(model, criterion, optimizer, scheduler, {"train": loader}, epochs)
    else:
        from transferkit.data import image_folder_loaders

        image_cache = runner == "transferkit+cache" and not feature_cache
        start = time.perf_counter()
        loaders = image_folder_loaders(
            job["root"], model, batch_size=job["batch_size"], image_size=job["size"], augment=augment,
            cache_images=image_cache, num_workers=job["transferkit_workers"],
        )  # fmt: skip
        loader = loaders["train"]
        trainer = _trainer(model, epochs, feature_cache)
        history = trainer.fit(loader)
        loss = history[-1]["train_loss"]
        if image_cache:
            cache_mb = loader.dataset.cache.memory_bytes / 2**20
    seconds = time.perf_counter() - start
    workers = loader.num_workers
    loader = loaders = trainer = None  # persistent workers exit here, so their peak is counted below
    gc.collect()
    accuracy = _heldout_accuracy(model, job["heldout_dir"], job["size"], job["batch_size"])
    return {
        **job,
        "seconds": seconds,
        "loss": float(loss),
        "heldout_acc": accuracy,
        "workers": workers,
        "rss_peak_mb": _peak_rss_mb(),
        "worker_peak_mb": _worker_peak_mb(),
        "image_cache_mb": cache_mb,
    }


# ------------------------------------------------------------------------------------------- parent
def plan(args: argparse.Namespace, paths: dict[str, str]) -> list[dict[str, Any]]:
    """The jobs in run order: repetitions outermost, then workloads, then runners side by side."""
    common = {
        **paths,
        "batch_size": args.batch_size,
        "size": args.size,
        "threads": args.threads,
        "tutorial_workers": args.tutorial_workers,
        "transferkit_workers": args.transferkit_workers,
    }
    jobs = []
    for rep in range(args.reps):
        for workload in args.workloads:
            epochs = getattr(args, f"{workload.removeprefix('folder_')}_epochs")
            for runner in args.runners:
                if runner == "transferkit" and workload == "folder_extract" and not args.extract_uncached:
                    continue  # as slow as the tutorial's loop and decided by no check: off by default
                jobs.append({"rep": rep, "workload": workload, "epochs": epochs, "runner": runner, **common})
    return jobs


def _run_child(job: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(job)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, runner): medians, and the medians of per-repetition ratios."""
    seconds = {(r["workload"], r["runner"], r["rep"]): r["seconds"] for r in results}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["runner"]), []).append(r)

    def ratio(runs: list[dict[str, Any]], base: str) -> float | None:
        keys = [(r, (r["workload"], base, r["rep"])) for r in runs]
        pairs = [r["seconds"] / seconds[key] for r, key in keys if key in seconds]
        return statistics.median(pairs) if pairs else None

    rows = []
    for (workload, runner), runs in groups.items():
        rows.append(
            {
                "workload": workload,
                "runner": runner,
                "epochs": runs[0]["epochs"],
                "runs": len(runs),
                "workers": runs[0]["workers"],
                "seconds": statistics.median(r["seconds"] for r in runs),
                "x_limit": ratio(runs, "limit"),
                "x_tutorial": ratio(runs, "tutorial"),
                "rss_peak_mb": statistics.median(r["rss_peak_mb"] for r in runs),
                "worker_peak_mb": statistics.median(r["worker_peak_mb"] for r in runs),
                "image_cache_mb": statistics.median(r["image_cache_mb"] for r in runs),
                "loss": statistics.median(r["loss"] for r in runs),
                "heldout_acc": statistics.median(r["heldout_acc"] for r in runs),
                "heldout_accs": [r["heldout_acc"] for r in sorted(runs, key=lambda r: r["rep"])],
            }
        )
    rows.sort(key=lambda r: (WORKLOADS.index(r["workload"]), RUNNERS.index(r["runner"])))
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of `summarize`'s rows."""

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "| workload | epochs | runner | workers | runs | median s | x limit | x tutorial | peak RSS MB | "
        "worker peak MB | image cache MB | final train loss | held-out acc (per rep) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        accs = " ".join(f"{a:.3f}" for a in r["heldout_accs"])
        worker = f"{r['worker_peak_mb']:.0f}" if r["workers"] else "-"
        lines.append(
            f"| {r['workload']} | {r['epochs']} | {r['runner']} | {r['workers']} | {r['runs']} | "
            f"{r['seconds']:.2f} | {x(r['x_limit'])} | {x(r['x_tutorial'])} | {r['rss_peak_mb']:.0f} | "
            f"{worker} | {r['image_cache_mb']:.1f} | "
            f"{r['loss']:.4f} | {accs} |"
        )
    return "\n".join(lines)


def acceptance(rows: Sequence[dict[str, Any]], accuracy_noise: float) -> list[str]:
    """The issue's acceptance checks that these rows can decide, one line each."""
    by = {(r["workload"], r["runner"]): r for r in rows}
    lines = []

    def check(name: str, ok: bool, detail: str) -> None:
        lines.append(f"- [{'x' if ok else ' '}] {name}: {detail}")

    cached = by.get(("folder_extract", "transferkit+cache"))
    if cached and cached["x_tutorial"]:
        speedup = 1 / cached["x_tutorial"]
        check(
            "folder_extract: cache_features >= 4.5x faster than the tutorial",
            speedup >= 4.5,
            f"{speedup:.2f}x",
        )
    for workload in ("folder_finetune", "folder_last_n"):
        r, tutorial = by.get((workload, "transferkit+cache")), by.get((workload, "tutorial"))
        if r and r["x_limit"] is not None:
            beside = f" (tutorial {tutorial['x_limit']:.3f}x)" if tutorial and tutorial["x_limit"] else ""
            check(
                f"{workload}: image cache <= 1.10x the limit",
                r["x_limit"] <= 1.10,
                f"{r['x_limit']:.3f}x{beside}",
            )
        plain = by.get((workload, "transferkit"))
        if r and plain:
            gap = abs(r["heldout_acc"] - plain["heldout_acc"])
            check(
                f"{workload}: held-out accuracy cached = uncached within {accuracy_noise:.2f}",
                gap <= accuracy_noise,
                f"{r['heldout_acc']:.3f} vs {plain['heldout_acc']:.3f} (medians)",
            )
    return lines


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=160, help="training photos, both classes (default 160)")
    p.add_argument("--heldout", type=int, default=64, help="held-out photos, both classes (default 64)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--threads", type=int, default=cpus, help="torch.set_num_threads in children")
    p.add_argument("--tutorial-workers", type=int, default=cpus, help="the tutorial loader's num_workers")
    p.add_argument(
        "--transferkit-workers", type=int, help="image_folder_loaders' num_workers (default: its own default)"
    )
    p.add_argument("--workloads", type=names(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--runners", type=names(RUNNERS), default=list(RUNNERS))
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--extract-epochs", type=int, default=5)
    p.add_argument("--last-n-epochs", type=int, default=3)
    p.add_argument("--extract-uncached", action="store_true", help="also run folder_extract uncached")
    p.add_argument("--accuracy-noise", type=float, default=0.05, help="held-out accuracy gap called noise")
    p.add_argument("--json", type=Path, help="also write every run's measurements here")
    p.add_argument("--inline", action="store_true", help="run jobs in this process (smoke tests only)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Generates the photos, runs the benchmark and prints the table; returns the summary rows."""
    args = _parse(argv)
    if args.child:
        print(json.dumps(run_job(json.loads(args.child))))
        return []
    with tempfile.TemporaryDirectory(prefix="transferkit-folders-") as tmp:
        root = Path(tmp) / "photos"
        make_photo_folder(root / "train", args.images // len(CLASSES), seed=0)
        make_photo_folder(Path(tmp) / "heldout", args.heldout // len(CLASSES), seed=1)
        paths = {
            "root": str(root),
            "train_dir": str(root / "train"),
            "heldout_dir": str(Path(tmp) / "heldout"),
            "limit_data": str(Path(tmp) / "limit.pt"),
        }
        _render_limit(root / "train", Path(paths["limit_data"]), args.size)
        jobs = plan(args, paths)
        results = []
        for i, job in enumerate(jobs):
            result = run_job(job) if args.inline else _run_child(job)
            results.append(result)
            if args.json:  # after every run, so an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
            print(
                f"[{i + 1}/{len(jobs)}] rep {job['rep']} {job['workload']} {job['runner']}: "
                f"{result['seconds']:.2f} s, acc {result['heldout_acc']:.3f}, "
                f"peak {result['rss_peak_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    rows = summarize(results)
    print(format_table(rows))
    print("\nAcceptance:\n" + "\n".join(acceptance(rows, args.accuracy_noise)))
    return rows


if __name__ == "__main__":
    main()
