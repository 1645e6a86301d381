"""Benchmark: which fine-tuning recipe wins with real ImageNet weights on small real datasets.

EfficientNet-Lite0 with its real ImageNet weights (`real_weights.weights_file`) is trained on small
tasks built from data that ships with scikit-learn, scikit-image and matplotlib (`real_weights`), with
each recipe at a few learning rates and several seeds; the test accuracy and the training seconds of
every run are averaged per (task, recipe, lr).

Recipes (B = the backbone's blocks, 17 for EfficientNet-Lite0; E = epochs):

- ``extract``: ``model.freeze("all")`` with ``cache_features=True``: a linear classifier on the frozen
  features.
- ``full``: ``model.unfreeze()``: everything trains at ``lr``.
- ``last_n``: ``model.freeze("last_n", n=B // 2)``: the top half of the blocks and the head train
  (8 of 17: what the default trains with 10 or more images per class).
- ``gradual``: ``model.freeze("gradual", n=0, step=ceil(B / (E - 1)))``: head alone, then blocks join
  from the top each epoch, all of them by the last epoch.
- ``two_phase``: the head alone for the first half of the epochs, then everything, the backbone at
  ``backbone_lr_mult`` (0.1) times ``lr`` and ``layer_decay`` 0.8 per block towards the stem (one
  optimizer and one cosine schedule over both phases), every norm layer fixed (``bn="frozen_all"``:
  with batches of 16, batch statistics did worse in a first exploration).
- ``default``: ``Trainer(model, epochs=E)`` and nothing else: transferkit's default recipe (the model
  was never frozen, so the Trainer trains the top third of the blocks, or the top half ``round(B / 2)``
  with 10 or more training images per class) at the Trainer's default rate (``auto``: 1e-3, or 1e-2
  under 5 training images per class; ``transferkit.training.recipe``); the same recipe also runs at
  fixed rates (``Trainer(model, epochs=E, lr=lr)``).

Every run: batch 16, shuffled, no augmentation (the tensors are fixed, so ``extract`` can cache), AdamW
with weight decay 0.01 and a per-step cosine schedule (the Trainer's defaults), fp32 on the CPU, no
validation split (the test set is scored once, after training). Seeds change the training images drawn
and the head's initialisation; every recipe sees the same seeds.

Run ``python benchmarks/bench_recipes.py --help`` for the flags; ``benchmarks/README.md`` has the
command and the latest table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_weights  # noqa: E402

from transferkit import Trainer, build_model  # noqa: E402

# name: (data builder, training images per class, where it lies from ImageNet)
TASKS: dict[str, tuple[Callable[..., Any], int, str]] = {
    "digits-3": (lambda seed: real_weights.digits(3, seed=seed), 3, "far"),
    "photos-10": (lambda seed: real_weights.photos(10, seed=seed), 10, "near"),
    "textures-5": (lambda seed: real_weights.textures(5, seed=seed), 5, "between"),
    "digits-50": (lambda seed: real_weights.digits(50, seed=seed, classes=5), 50, "far"),
}
RECIPES = ("extract", "full", "last_n", "gradual", "two_phase", "default")
# the learning rates each recipe runs at: the head's rate (lr); extract's head learns fastest at high rates
LRS: dict[str, tuple[float, ...]] = {
    "extract": (1e-2, 1e-3),
    "full": (1e-3, 1e-4),
    "last_n": (1e-3, 1e-4),
    "gradual": (1e-3, 1e-4),
    "two_phase": (3e-3, 1e-3),
    "default": (None, 1e-3, 3e-3, 1e-2),  # None: no lr given, the Trainer's default rate ("auto")
}


def configure(recipe: str, model: Any, epochs: int) -> dict[str, Any]:
    """Apply ``recipe``'s freeze policy to ``model``; return its extra Trainer arguments."""
    blocks = len(model.blocks)
    if recipe == "extract":
        model.freeze("all")
        return {"cache_features": True}
    if recipe == "full":
        model.unfreeze()
        return {}
    if recipe == "last_n":
        model.freeze("last_n", n=blocks // 2)
        return {}
    if recipe == "gradual":
        model.freeze("gradual", n=0, step=math.ceil(blocks / max(1, epochs - 1)))
        return {}
    if recipe == "two_phase":
        model.freeze("gradual", n=0, step=blocks, every=max(1, epochs // 2), bn="frozen_all")
        return {"layer_decay": 0.8, "backbone_lr_mult": 0.1}
    if recipe == "default":
        return {}
    raise ValueError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")


def run_one(
    task: str, recipe: str, lr: float | None, seed: int, *, weights: Path, epochs: int, batch_size: int
) -> dict[str, Any]:
    """Train one (task, recipe, lr, seed) and score it on the task's test set."""
    (x, y), (tx, ty) = TASKS[task][0](seed)
    torch.manual_seed(seed)
    model = build_model(real_weights.ARCH, num_classes=int(y.max()) + 1, pretrained=str(weights))
    extra = configure(recipe, model, epochs)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(tx, ty), batch_size=128)
    trainer = Trainer(model, epochs=epochs, lr=lr, progress=False, seed=seed, device="cpu", **extra)
    started = time.perf_counter()
    history = trainer.fit({"train": train})
    seconds = time.perf_counter() - started
    acc = trainer.evaluate(test)["acc"]
    used = history[0]["lr"]  # the head's rate in the first epoch: what "auto" chose
    return {
        "task": task,
        "recipe": recipe,
        "lr": lr,
        "lr_used": used,
        "seed": seed,
        "acc": acc,
        "seconds": seconds,
    }


def lr_text(row: dict[str, Any]) -> str:
    """``0.001``, or ``auto (0.01)`` for a run that left the rate to the Trainer."""
    return f"{row['lr']:g}" if row["lr"] is not None else f"auto ({row['lr_used']:g})"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean accuracy (and its spread over seeds) and mean seconds per (task, recipe, lr)."""
    keys = list(dict.fromkeys((r["task"], r["recipe"], r["lr"]) for r in runs))
    rows = []
    for task, recipe, lr in keys:
        same = [r for r in runs if (r["task"], r["recipe"], r["lr"]) == (task, recipe, lr)]
        accs = [r["acc"] for r in same]
        rows.append(
            {
                "task": task,
                "recipe": recipe,
                "lr": lr,
                "lr_used": same[0]["lr_used"],
                "seeds": len(same),
                "acc": statistics.mean(accs),
                "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "seconds": statistics.mean(r["seconds"] for r in same),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one line per (task, recipe, lr), the best accuracy of each task in bold."""
    best = {}
    for row in rows:
        best[row["task"]] = max(best.get(row["task"], 0.0), row["acc"])
    lines = [
        "| task | recipe | lr | seeds | test acc (mean +- sd) | behind best | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = f"{r['acc']:.3f} +- {r['acc_sd']:.3f}"
        acc = f"**{acc}**" if r["acc"] == best[r["task"]] else acc
        behind = 100 * (best[r["task"]] - r["acc"])
        lines.append(
            f"| {r['task']} | {r['recipe']} | {lr_text(r)} | {r['seeds']} | {acc} | {behind:.1f} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    """The default (no lr given) within 2 accuracy points of the best on every task, in no more time
    than ``full`` at 1e-3."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        same = [r for r in rows if r["task"] == task]
        default = [r for r in same if r["recipe"] == "default" and r["lr"] is None]
        full = [r for r in same if r["recipe"] == "full" and r["lr"] == 1e-3]
        if not default:
            continue
        best = max(same, key=lambda r: r["acc"])
        gap = 100 * (best["acc"] - default[0]["acc"])
        ok = gap <= 2.0
        lines.append(
            f"- [{'x' if ok else ' '}] {task}: default, lr {lr_text(default[0])}, {default[0]['acc']:.3f} vs "
            f"best {best['acc']:.3f} ({best['recipe']} at lr {lr_text(best)}): {gap:.1f} points behind (<= 2)"
        )
        if full:
            ok = default[0]["seconds"] <= full[0]["seconds"]
            lines.append(
                f"- [{'x' if ok else ' '}] {task}: default {default[0]['seconds']:.1f} s <= full fine-tuning "
                f"(lr 1e-3) {full[0]['seconds']:.1f} s"
            )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated from {', '.join(TASKS)}")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument(
        "--lrs", help="comma-separated learning rates (or auto) for every recipe (default: per recipe)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (task, recipe, lr) (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="default 10 (the Trainer's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--workers", type=int, default=1, help="runs side by side, one process each (default 1)"
    )
    parser.add_argument("--weights-dir", help="where to write the converted weights (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks, recipes = args.tasks.split(","), args.recipes.split(",")
    unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise SystemExit(f"unknown task or recipe {unknown}; tasks: {list(TASKS)}, recipes: {list(RECIPES)}")
    jobs = [
        (task, recipe, lr, seed)
        for task in tasks
        for recipe in recipes
        for lr in (
            [None if v == "auto" else float(v) for v in args.lrs.split(",")] if args.lrs else LRS[recipe]
        )
        for seed in range(args.seeds)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        weights = real_weights.weights_file(args.weights_dir or tmp)
        settings = {"weights": weights, "epochs": args.epochs, "batch_size": args.batch_size}
        runs, started = [], time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(
            args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
            initargs=(args.threads,),
        ) if args.workers > 1 else contextlib.nullcontext() as pool:  # fmt: skip
            for run in (pool.map if pool else map)(functools.partial(run_one, **settings), *zip(*jobs)):
                runs.append(run)
                print(
                    f"{run['task']:<12} {run['recipe']:<10} lr={lr_text(run):<12} seed={run['seed']} "
                    f"acc={run['acc']:.3f} {run['seconds']:.1f}s",
                    flush=True,
                )
    rows = summarise(runs)
    print(
        f"\n{len(runs)} runs in {time.perf_counter() - started:.0f} s, {args.workers} process(es) of "
        f"{args.threads} thread(s) on "
        f"{os.cpu_count()} CPUs, {args.epochs} epochs, batch {args.batch_size}, python "
        f"{platform.python_version()}, torch {torch.__version__}\n"
    )
    print(table(rows))
    print("\nAcceptance:")
    print("\n".join(acceptance(rows)))
    return rows


if __name__ == "__main__":
    main()
