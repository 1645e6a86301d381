"""Benchmark: training throughput on a GPU, fp32 hand-written loop against transferkit's AMP + channels_last.

Variants, each run interleaved with the others (A B C A B C ...) in one process:

- ``plain-fp32``: torchvision's model with a new ``fc``, a tutorial-style loop (fp32, contiguous memory).
- ``transferkit-fp32``: ``build_model`` + ``Trainer(precision="fp32")``: the Trainer's own cost.
- ``transferkit-amp``: ``Trainer(precision="auto")``: bf16 autocast (fp16 with a scaler where bf16 is
  unsupported) and channels_last, as the Trainer does on CUDA by default.
- ``transferkit-amp-compile`` (with ``--compile``): the same with ``compile=True``.

All train every parameter with AdamW on the same batches. The batches are made once and kept on the device,
so the figures are the training step's throughput, not the data pipeline's. The first ``--warmup`` steps
of every run are not timed (cuDNN autotuning, allocator growth, compilation).

    python benchmarks/bench_gpu.py                     # resnet50, 224 px, batch 64, on CUDA
    python benchmarks/bench_gpu.py --compile --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from transferkit import Trainer, build_model

VARIANTS = ("plain-fp32", "transferkit-fp32", "transferkit-amp", "transferkit-amp-compile")
NUM_CLASSES = 10
POOL = 4  # distinct batches, cycled


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(args: argparse.Namespace, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``warmup + steps`` batches cycling over a few: images on the device, labels on the CPU."""
    g = torch.Generator().manual_seed(0)
    pool = [
        (
            torch.randn(args.batch_size, 3, args.size, args.size, generator=g).to(device),
            torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=g),
        )
        for _ in range(POOL)
    ]
    return [pool[i % POOL] for i in range(args.warmup + args.steps)]


def run_plain(args: argparse.Namespace, batches: list[Any], device: torch.device) -> float:
    """Seconds for the timed steps of the hand-written fp32 loop."""
    model = getattr(torchvision.models, args.model)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    criterion = nn.CrossEntropyLoss()
    for i, (inputs, labels) in enumerate(batches):
        if i == args.warmup:
            _sync(device)
            start = time.perf_counter()
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


class _StartClock:
    """Callback: starts the clock once the warm-up steps are done."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start = warmup, device, None

    def on_batch_end(self, trainer: Trainer) -> None:
        if trainer.step + 1 == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()


def run_transferkit(
    args: argparse.Namespace, batches: list[Any], device: torch.device, precision: str, compile: bool
) -> float:
    """Seconds for the timed steps of one ``Trainer.fit`` epoch over ``batches``."""
    model = build_model(args.model, num_classes=NUM_CLASSES, pretrained=False)
    clock = _StartClock(args.warmup, device)
    trainer = Trainer(
        model,
        epochs=1,
        lr=1e-3,
        scheduler="none",
        device=device,
        precision=precision,
        compile=compile,
        progress=False,
        restore_best=False,
        callbacks=[clock],
    )
    trainer.fit(batches)
    _sync(device)
    return time.perf_counter() - clock.start


def _runner(variant: str) -> Callable[[argparse.Namespace, list[Any], torch.device], float]:
    if variant == "plain-fp32":
        return run_plain
    precision = "fp32" if variant == "transferkit-fp32" else "auto"
    return lambda a, b, d: run_transferkit(a, b, d, precision, compile=variant.endswith("compile"))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="a torchvision ResNet-style model (default resnet50)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="timed steps per run (default 50)")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps first (default 15)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--compile", action="store_true", help="also run transferkit-amp with compile=True")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the variants and prints images/s; returns one row per variant."""
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark is for GPUs (use --device cpu for a smoke run)")
    torch.backends.cudnn.benchmark = True
    batches = make_batches(args, device)
    variants = [v for v in VARIANTS if args.compile or not v.endswith("compile")]
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, int] = {}
    for rep in range(args.reps):
        for v in variants:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds[v].append(_runner(v)(args, batches, device))
            if device.type == "cuda":
                peaks[v] = torch.cuda.max_memory_allocated(device)
            print(f"rep {rep} {v}: {args.steps * args.batch_size / seconds[v][-1]:.1f} images/s", flush=True)
    images = args.steps * args.batch_size
    base = statistics.median(seconds["plain-fp32"])
    rows = [
        {
            "variant": v,
            "images_per_s": images / statistics.median(s),
            "speedup": base / statistics.median(s),
            "peak_mb": peaks[v] / 2**20 if v in peaks else None,
        }
        for v, s in seconds.items()
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{args.model}, {args.size} px, batch {args.batch_size}, {name}, torch {torch.__version__}")
    print("| variant | images/s (median) | x plain-fp32 | peak GPU memory MB |\n|---|---:|---:|---:|")
    for r in rows:
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        print(f"| {r['variant']} | {r['images_per_s']:.1f} | {r['speedup']:.2f} | {peak} |")
    return rows


if __name__ == "__main__":
    main()
