"""Benchmark: transferkit's Trainer against a hand-written loop (and Lightning, when installed).

Every (repetition, workload, trainer) runs in a fresh process, interleaved: for each repetition, each
workload runs under every trainer one after the other (plain, transferkit, ..., plain, transferkit,
...), so slow drifts in machine load hit all trainers alike. A child process times the training call
only (imports, data loading and model building excluded) and reports its peak resident memory
(``ru_maxrss``, imports and model included) and that peak minus the resident memory when training
started (what training itself added).

Trainers:

- ``plain``: torchvision resnet18 with its ``fc`` replaced, trained by ``train_model`` below, written
  like the PyTorch transfer-learning tutorial's (frozen layers get ``requires_grad=False``).
- ``transferkit``: ``build_model("resnet18")`` + ``Trainer``; ``transferkit+cache`` adds
  ``cache_features=True``.
- ``lightning``: the same torchvision model in a ``LightningModule`` (only when ``lightning`` imports).

All use the same data (SyntheticShapes rendered once to tensors), batch size, shuffling loader,
AdamW (lr 1e-3, weight decay 0.01) with a per-step cosine schedule, and fp32 on the CPU.

Run ``python benchmarks/bench_trainers.py --help`` for the flags; ``benchmarks/README.md`` has the
command and the latest table.
"""

from __future__ import annotations

import argparse
import json
import math
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

WORKLOADS = ("finetune", "extract", "last_n", "scaling")
TRAINERS = ("plain", "transferkit", "transferkit+cache", "lightning")
NUM_CLASSES = 4
LR, WEIGHT_DECAY = 1e-3, 0.01


# ----------------------------------------------------------------------------------------- children
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    """The resident memory now (the peak is a high-water mark that model building may have set)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):  # not Linux: fall back to the peak so far
        return _peak_rss_mb()


def _cosine(total: int):
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _torchvision_resnet18(policy: str):
    """The tutorial's model: torchvision resnet18, new ``fc``, frozen layers ``requires_grad=False``."""
    import torch
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    if policy == "extract":
        for p in model.parameters():
            p.requires_grad = False
    elif policy == "last_n":  # the last 2 residual blocks (layer4) train, as last_n with n=2
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("layer4.")
    model.fc = torch.nn.Linear(model.fc.in_features, NUM_CLASSES)  # new layers train
    return model


def train_model(model, criterion, optimizer, scheduler, dataloaders, num_epochs):
    """The tutorial's loop: phases, running loss and accuracy, best weights kept (scheduler per step)."""
    import copy

    import torch

    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc = 0.0
    for _epoch in range(num_epochs):
        for phase in dataloaders:
            if phase == "train":
                model.train()
            else:
                model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in dataloaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                        scheduler.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)
            epoch_acc = running_corrects.double() / len(dataloaders[phase].dataset)
            if phase == "val" and epoch_acc > best_acc:
                best_acc = epoch_acc
                best_model_wts = copy.deepcopy(model.state_dict())
    if "val" in dataloaders:
        model.load_state_dict(best_model_wts)
    return running_loss / len(dataloaders["train"].dataset)


def _run_plain(policy: str, epochs: int, loader: Any) -> tuple[float, float, float]:
    import torch

    model = _torchvision_resnet18(policy)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(epochs * len(loader)))
    before = _rss_mb()
    start = time.perf_counter()
    loss = train_model(model, torch.nn.CrossEntropyLoss(), optimizer, scheduler, {"train": loader}, epochs)
    return time.perf_counter() - start, before, loss


def _run_transferkit(policy: str, epochs: int, loader: Any, cache: bool) -> tuple[float, float, float]:
    from transferkit import Trainer, build_model

    model = build_model("resnet18", neck="identity", head="linear", num_classes=NUM_CLASSES, pretrained=False)
    if policy == "extract":
        model.freeze("all")
    elif policy == "last_n":
        model.freeze("last_n", n=2)
    trainer = Trainer(
        model, epochs=epochs, lr=LR, weight_decay=WEIGHT_DECAY, progress=False, cache_features=cache
    )
    before = _rss_mb()
    start = time.perf_counter()
    history = trainer.fit(loader)
    return time.perf_counter() - start, before, history[-1]["train_loss"]


def _run_lightning(policy: str, epochs: int, loader: Any) -> tuple[float, float, float]:
    import lightning as L
    import torch

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _torchvision_resnet18(policy)
            self.criterion = torch.nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, labels = batch
            loss = self.criterion(self.model(inputs), labels)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(epochs * len(loader)))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    module = Module()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    before = _rss_mb()
    start = time.perf_counter()
    trainer.fit(module, loader)
    return (
        time.perf_counter() - start,
        before,
        float(trainer.callback_metrics.get("train_loss", float("nan"))),
    )


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Runs one (trainer, workload, epochs) job in this process and returns its measurements."""
    started = time.perf_counter()
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(job["threads"])
    data = torch.load(job["data"], weights_only=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        TensorDataset(data["images"], data["labels"]),
        batch_size=job["batch_size"],
        shuffle=True,
        generator=generator,
    )
    policy = {"finetune": "none", "extract": "extract", "scaling": "extract", "last_n": "last_n"}[
        job["workload"]
    ]
    trainer = job["trainer"]
    if trainer == "plain":
        seconds, before, loss = _run_plain(policy, job["epochs"], loader)
    elif trainer.startswith("transferkit"):
        seconds, before, loss = _run_transferkit(
            policy, job["epochs"], loader, cache=trainer.endswith("cache")
        )
    elif trainer == "lightning":
        seconds, before, loss = _run_lightning(policy, job["epochs"], loader)
    else:
        raise ValueError(f"unknown trainer {trainer!r}; use one of {TRAINERS}")
    peak = _peak_rss_mb()
    return {
        **job,
        "seconds": seconds,
        "setup_seconds": time.perf_counter() - started - seconds,
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "rss_train_mb": peak - before,
        "loss": loss,
    }


# ------------------------------------------------------------------------------------------- parent
def _lightning_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightning") is not None


def _render_data(path: Path, images: int, size: int) -> None:
    import numpy as np
    import torch

    from transferkit.data import SyntheticShapes

    ds = SyntheticShapes(images, image_size=size, num_classes=NUM_CLASSES, seed=0)
    xs, ys = zip(*(ds[i] for i in range(images)), strict=True)
    torch.save({"images": torch.stack(xs), "labels": torch.as_tensor(np.array(ys))}, path)


def plan(args: argparse.Namespace, data: Path, lightning: bool) -> list[dict[str, Any]]:
    """The jobs in run order: repetitions outermost, then workloads, then trainers side by side."""
    trainers = [t for t in args.trainers if t != "lightning" or lightning]
    scaling_trainers = [t for t in trainers if t in args.scaling_trainers]
    runs: list[tuple[str, int]] = []
    for workload in args.workloads:
        if workload == "scaling":
            runs += [("scaling", e) for e in args.scaling_epochs]
        else:
            runs.append((workload, getattr(args, f"{workload}_epochs")))
    common = {"data": str(data), "batch_size": args.batch_size, "threads": args.threads}
    jobs = []
    for rep in range(args.reps):
        for workload, epochs in runs:
            extra_point = workload == "scaling" and epochs != args.extract_epochs
            for trainer in scaling_trainers if extra_point else trainers:
                if trainer == "transferkit+cache" and workload == "finetune":
                    continue  # nothing is frozen: nothing to cache
                jobs.append(
                    {"rep": rep, "workload": workload, "epochs": epochs, "trainer": trainer, **common}
                )
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
    """One row per (workload, epochs, trainer): median seconds, median ratio to plain, memory."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["epochs"], r["trainer"]), []).append(r)
    plain = {(r["workload"], r["epochs"], r["rep"]): r["seconds"] for r in results if r["trainer"] == "plain"}
    rows = []
    for (workload, epochs, trainer), runs in groups.items():
        ratios = [
            r["seconds"] / plain[(workload, epochs, r["rep"])]
            for r in runs
            if (workload, epochs, r["rep"]) in plain
        ]
        rows.append(
            {
                "workload": workload,
                "epochs": epochs,
                "trainer": trainer,
                "runs": len(runs),
                "seconds": statistics.median(r["seconds"] for r in runs),
                "ratio": statistics.median(ratios) if ratios else None,
                "rss_peak_mb": statistics.median(r["rss_peak_mb"] for r in runs),
                "rss_train_mb": statistics.median(r["rss_train_mb"] for r in runs),
                "loss": statistics.median(r["loss"] for r in runs),
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of `summarize`'s rows."""
    lines = [
        "| workload | epochs | trainer | runs | median s | x plain (median of pairs) | peak RSS MB | "
        "training adds MB | final train loss |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"| {r['workload']} | {r['epochs']} | {r['trainer']} | {r['runs']} | {r['seconds']:.2f} | "
            f"{ratio} | {r['rss_peak_mb']:.0f} | {r['rss_train_mb']:.0f} | {r['loss']:.4f} |"
        )
    return "\n".join(lines)


def acceptance(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's acceptance checks that these rows can decide, one line each."""
    by = {(r["workload"], r["epochs"], r["trainer"]): r for r in rows}

    def get(workload: str, trainer: str, epochs: int | None = None) -> dict[str, Any] | None:
        found = [r for (w, e, t), r in by.items() if w == workload and t == trainer and epochs in (None, e)]
        return found[0] if found else None

    lines = []

    def check(name: str, ok: bool, detail: str) -> None:
        lines.append(f"- [{'x' if ok else ' '}] {name}: {detail}")

    tk = get("finetune", "transferkit")
    if tk and tk["ratio"] is not None:
        check("finetune: transferkit / plain <= 1.03", tk["ratio"] <= 1.03, f"{tk['ratio']:.3f}")
    extract = [
        r for r in rows if r["workload"] in ("extract", "scaling") and r["trainer"] == "transferkit+cache"
    ]
    five = [r for r in extract if r["epochs"] == 5 and r["ratio"] is not None]
    if five:
        speedup = 1 / five[0]["ratio"]
        check("extract, 5 epochs: cache >= 4x faster than plain", speedup >= 4, f"{speedup:.2f}x")
    one = [r for r in extract if r["epochs"] == 1]
    twenty = [r for r in extract if r["epochs"] == 20]
    if one and twenty:
        growth = twenty[0]["seconds"] / one[0]["seconds"]
        check("extract with cache: 20 epochs < 2 x 1 epoch", growth < 2, f"{growth:.2f}x")
    for trainer, limit, label in (("transferkit", 1.0, "<= 1.0x plain"), ("transferkit+cache", 1 / 1.5, "")):
        r = get("last_n", trainer)
        if r and r["ratio"] is not None:
            if trainer == "transferkit":
                check(f"last_n: transferkit {label}", r["ratio"] <= limit, f"{r['ratio']:.3f}")
            else:
                check(
                    "last_n: cache >= 1.5x faster than plain", r["ratio"] <= limit, f"{1 / r['ratio']:.2f}x"
                )
    for workload in ("extract", "last_n"):
        base = get(workload, "plain")
        for trainer in ("transferkit", "transferkit+cache"):
            r = get(workload, trainer, base["epochs"] if base else None)
            if base and r:
                ok = r["rss_peak_mb"] <= base["rss_peak_mb"]
                check(
                    f"{workload}: {trainer} peak RSS <= plain",
                    ok,
                    f"{r['rss_peak_mb']:.0f} vs {base['rss_peak_mb']:.0f} MB "
                    f"(training adds {r['rss_train_mb']:.0f} vs {base['rss_train_mb']:.0f} MB)",
                )
    return lines


def names(valid: Sequence[str]):
    """An argparse type: a comma-separated list of names, each one of ``valid``."""

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(valid)}")
        return items

    return parse


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="training images (default 256)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads in children"
    )
    p.add_argument("--workloads", type=names(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--trainers", type=names(TRAINERS), default=list(TRAINERS))
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--extract-epochs", type=int, default=5)
    p.add_argument("--last-n-epochs", type=int, default=3)
    p.add_argument(
        "--scaling-epochs",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 5, 20],
        help="e.g. 1,5,20",
    )
    p.add_argument(
        "--scaling-trainers",
        type=names(TRAINERS),
        default=["plain", "transferkit+cache"],
        help="trainers for the scaling points other than --extract-epochs (all trainers run that one)",
    )
    p.add_argument("--json", type=Path, help="also write every run's measurements here")
    p.add_argument("--inline", action="store_true", help="run jobs in this process (smoke tests only)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark and prints the table; returns the summary rows."""
    args = _parse(argv)
    if args.child:
        print(json.dumps(run_job(json.loads(args.child))))
        return []
    if "extract" in args.workloads and "scaling" in args.workloads:
        # extract at args.extract_epochs is one point of the scaling curve: run it once
        args.workloads = [w for w in args.workloads if w != "extract"]
        args.scaling_epochs = sorted({*args.scaling_epochs, args.extract_epochs})
    lightning = _lightning_available()
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-") as tmp:
        data = Path(tmp) / "data.pt"
        _render_data(data, args.images, args.size)
        jobs = plan(args, data, lightning)
        results = []
        for i, job in enumerate(jobs):
            result = run_job(job) if args.inline else _run_child(job)
            results.append(result)
            if args.json:  # after every run, so an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
            print(
                f"[{i + 1}/{len(jobs)}] rep {job['rep']} {job['workload']}@{job['epochs']} {job['trainer']}: "
                f"{result['seconds']:.2f} s, peak {result['rss_peak_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    rows = summarize(results)
    for r in rows:  # the extract rows double as the scaling curve
        if r["workload"] == "scaling" and r["epochs"] == args.extract_epochs:
            r["workload"] = "extract"
    rows.sort(key=lambda r: (WORKLOADS.index(r["workload"]), r["epochs"], TRAINERS.index(r["trainer"])))
    print(format_table(rows))
    if not lightning and "lightning" in args.trainers:
        print("\n(lightning is not installed: its rows are missing)")
    print("\nAcceptance:\n" + "\n".join(acceptance(rows)))
    return rows


if __name__ == "__main__":
    main()
