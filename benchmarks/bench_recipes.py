"""Benchmark: which fine-tuning recipe wins with real ImageNet weights on small real datasets.

EfficientNet-Lite0 with its real ImageNet weights (`real_weights.weights_file`) is trained on small
tasks built from data that ships with scikit-learn, scikit-image and matplotlib (`real_weights`), with
each recipe at a few learning rates and several seeds; the test accuracy and the training seconds of
every run are averaged per (task, recipe, lr).

Recipes (B = the backbone's blocks, 17 for EfficientNet-Lite0; E = epochs):

- ``probe``: ``Trainer(model, recipe="probe")``: the backbone frozen, the head trained to convergence on
  cached features (`transferkit.training.recipe`).
- ``lp_ft``: ``Trainer(model, recipe="lp_ft")``: that probe, then the top third (half with 10 or more
  images per class, three quarters with 100 or more) of the blocks fine-tuned from the probe's head for
  E epochs.
- ``full``: ``model.unfreeze()``: everything trains at ``lr``.
- ``last_n``: ``model.freeze("last_n", n=B // 2)``: the top half of the blocks and the head train.
- ``third``: ``model.freeze("last_n", n=round(B / 3))``: the top third.
- ``two_phase``: the head alone for the first half of the epochs, then everything, the backbone at
  ``backbone_lr_mult`` (0.1) times ``lr`` and ``layer_decay`` 0.8 per block towards the stem (one
  optimizer and one cosine schedule over both phases), every norm layer fixed (``bn="frozen_all"``).
- ``lora``, ``bitfit``, ``norm``: ``model.freeze(policy)``: the parameter-efficient policies (LoRA with
  its defaults, r=8 and alpha=16 on the ungrouped convolutions of the top third of the blocks; every
  bias; the norm layers' affine parameters), the pretrained weights unchanged, the head beside them.
- ``default``: ``Trainer(model, epochs=E)`` and nothing else: transferkit's default (``recipe="auto"``:
  without validation data, the same as ``lp_ft``); also at fixed rates (``Trainer(model, lr=lr)``: the
  fine-tune phase's rate), the table that ``lr_find``'s suggestion is checked against.
- ``val``: the default given validation data, ``Trainer(model, epochs=E).fit({"train": ...,
  "val": ...})``: the path of the intended use, where ``recipe="auto"`` ends with the better of the
  probe and the fine-tuned model. The validation split holds `VAL_SHARE` as many images per class as
  the training set (rounded up), drawn apart from both (`real_weights`); the recipe has data the others
  do not, so it is never the "best" the default is compared with.
- ``slow_head``: the default's plan with the head at `SLOW_HEAD_LR` and the fine-tuned blocks at ``lr``
  (``Trainer(model, lr=SLOW_HEAD_LR, backbone_lr_mult=lr / SLOW_HEAD_LR)``): the probe's head barely
  moves while the blocks adapt.

Every run: batch 16, shuffled, no augmentation unless ``--augment`` names one of `AUGMENTS` (the tensors
are fixed, so the probe can cache; ``--augment`` draws the loaders' random crop, and flip, per sample and
epoch, and the probe then runs uncached), AdamW with weight decay 0.01 and a per-step cosine schedule
(the Trainer's defaults), fp32 on the CPU, no validation split but ``val``'s (the test set is scored
once, after training). Seeds change the training images drawn and the head's initialisation; every recipe
sees the same seeds. With ``--confirm N`` each task's best (recipe, lr) is then trained again beside the
default on N seeds the table did not use (`confirm`): the highest of many means is partly its seeds'
luck, and fresh seeds measure the gap without it.

Run ``python benchmarks/bench_recipes.py --help`` for the flags; ``benchmarks/README.md`` has the
command and the latest table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_weights  # noqa: E402

from transferkit import Trainer, build_model  # noqa: E402
from transferkit.training.recipe import default_finetune_lr  # noqa: E402

TASKS = real_weights.TASKS  # name: (data builder, training images per class, where it lies from ImageNet)
RECIPES = (
    "probe",
    "lp_ft",
    "full",
    "last_n",
    "third",
    "two_phase",
    "lora",
    "bitfit",
    "norm",
    "default",
    "val",
    "slow_head",
    "fastai",
)
PEFT = ("lora", "bitfit", "norm")
# the learning rates each recipe runs at (the head's, or the fine-tune phase's); None: the recipe's own
LRS: dict[str, tuple[float | None, ...]] = {
    "probe": (None,),
    "lp_ft": (None,),
    "full": (1e-3,),
    "last_n": (1e-3,),
    "third": (1e-3,),
    "two_phase": (3e-3, 1e-3),
    **dict.fromkeys(PEFT, (1e-3, 3e-3)),
    # None: no lr given (the fine-tune phase at 1e-3, 3e-3 from 100 images per class; on far data the
    # blocks at 3e-3 and the head at 3e-4); a fixed rate equal to the default's own is not run twice
    "default": (None, 3e-4, 1e-3, 3e-3),
    "val": (None,),
    "slow_head": (1e-3, 3e-3),  # the blocks' rate; the head's is SLOW_HEAD_LR
    "fastai": (None,),  # fastai's own: fine_tune(epochs, base_lr=2e-3)
}
SLOW_HEAD_LR = 3e-4  # the head's rate in ``slow_head``
VAL_SHARE = 0.5  # ``val``: validation images per class, as a share of the training images per class
WITH_VALIDATION = ("val",)  # recipes given data the others are not: never a task's best

# the training images' augmentation (``--augment``): what the folder loaders' ``augment`` and ``flip`` do
AUGMENTS = {
    "none": None,  # the fixed tensors (features cache)
    "light": (0.35, True),  # the loaders' default: random resized crop down to 35 % of the area, and flip
    "noflip": (0.35, False),  # ``flip=False``
    "mild": (0.7, False),  # ``crop_scale=(0.7, 1.0), flip=False``
}


class Augmented(Dataset):
    """The training tensors with the folder loaders' random crop (and flip) drawn per sample and epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, scale: float, flip: bool) -> None:
        self.x, self.y = x, y
        crop = v2.RandomResizedCrop(x.shape[-1], scale=(scale, 1.0), antialias=True)
        self.transform = v2.Compose([crop, *([v2.RandomHorizontalFlip()] if flip else [])])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[index]), self.y[index]


def configure(recipe: str, model: Any, epochs: int, lr: float | None = None) -> dict[str, Any]:
    """Apply ``recipe``'s freeze policy to ``model``; return its Trainer arguments besides ``lr``
    (``slow_head``: the head's ``lr`` too, ``lr`` being the blocks')."""
    blocks = len(model.blocks)
    if recipe in ("probe", "lp_ft"):
        return {"recipe": recipe}
    if recipe == "full":
        model.unfreeze()
        return {}
    if recipe == "last_n":
        model.freeze("last_n", n=blocks // 2)
        return {}
    if recipe == "third":
        model.freeze("last_n", n=round(blocks / 3))
        return {}
    if recipe in PEFT:
        model.freeze(recipe)
        return {}
    if recipe == "two_phase":
        model.freeze("gradual", n=0, step=blocks, every=max(1, epochs // 2), bn="frozen_all")
        return {"layer_decay": 0.8, "backbone_lr_mult": 0.1}
    if recipe in ("default", "val"):
        return {}
    if recipe == "slow_head":
        return {"lr": SLOW_HEAD_LR, "backbone_lr_mult": (lr or 1e-3) / SLOW_HEAD_LR}
    raise ValueError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")


def _name(task: str, backbone: str) -> str:
    """A task's name in the tables: ``digits-3``, or ``digits-3 (lite1)`` on another backbone."""
    return task if backbone == "efficientnet_lite0" else f"{task} ({backbone.removeprefix('efficientnet_')})"


def run_one(
    task: str,
    recipe: str,
    lr: float | None,
    seed: int,
    backbone: str,
    *,
    weights_dir: Path,
    epochs: int,
    batch_size: int,
    augment: str = "none",
) -> dict[str, Any]:
    """Train one (task, recipe, lr, seed, backbone) and score it on the task's test set."""
    builder, per_class, _ = TASKS[task]
    val_count = math.ceil(VAL_SHARE * per_class) if recipe in WITH_VALIDATION else 0
    (x, y), (tx, ty), *val = builder(seed, val_count)
    torch.manual_seed(seed)
    weights = real_weights.weights_file(weights_dir, backbone)
    arch = real_weights.BACKBONES[backbone].arch
    name = _name(task, backbone)
    if recipe == "fastai":
        from fastai_recipe import fastai_fine_tune

        acc, seconds = fastai_fine_tune(
            (x, y), (tx, ty), weights, arch, seed=seed, epochs=epochs, batch_size=batch_size
        )
        return {"task": name, "recipe": recipe, "lr": lr, "lr_used": 2e-3, "seed": seed, "acc": acc,
                "seconds": seconds}  # fmt: skip
    model = build_model(arch, num_classes=int(y.max()) + 1, pretrained=str(weights))
    extra = {"lr": lr, **configure(recipe, model, epochs, lr)}
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(x, y) if AUGMENTS[augment] is None else Augmented(x, y, *AUGMENTS[augment])
    train = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(TensorDataset(tx, ty), batch_size=128)
    trainer = Trainer(model, epochs=epochs, progress=False, seed=seed, device="cpu", **extra)
    started = time.perf_counter()
    loaders = {"train": train}
    if val:
        loaders["val"] = DataLoader(TensorDataset(*val[0]), batch_size=128)
    history = trainer.fit(loaders)
    seconds = time.perf_counter() - started
    acc = trainer.evaluate(test)["acc"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # the last phase's
    tuned = [row for row in history if row.get("phase", "finetune") == "finetune"] or history
    used = tuned[0]["lr"]  # the head's rate in the first (fine-tune) epoch: what "auto" chose
    return {
        "task": name,
        "recipe": recipe,
        "lr": lr,
        "lr_used": used,
        "seed": seed,
        "acc": acc,
        "seconds": seconds,
        "trainable": trainable,
        **({"kept": trainer.kept} if val else {}),  # the phase the default ended with
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
                "trainable": same[0].get("trainable"),
                "by_seed": {r["seed"]: r["acc"] for r in same},
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one line per (task, recipe, lr), the best accuracy of each task in bold."""
    best = {task: _best([r for r in rows if r["task"] == task]) for task in {r["task"] for r in rows}}
    lines = [
        "| task | recipe | lr | seeds | test acc (mean +- sd) | behind best | seconds | trains |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = f"{r['acc']:.3f} +- {r['acc_sd']:.3f}"
        top = best[r["task"]]
        if top is not None and r["acc"] == top["acc"] and r["recipe"] not in WITH_VALIDATION:
            acc = f"**{acc}**"
        behind = f"{100 * (top['acc'] - r['acc']):.1f}" if top is not None else "-"
        lines.append(
            f"| {r['task']} | {r['recipe']} | {lr_text(r)} | {r['seeds']} | {acc} | {behind} | "
            f"{r['seconds']:.1f} | {_count(r.get('trainable'))} |"
        )
    return "\n".join(lines)


def _count(n: int | None) -> str:
    """``4.0 M``, ``52 k``: a parameter count (the last phase's trainable ones), ``-`` when not measured."""
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _best(same: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of highest mean accuracy among one task's rows, of the recipes without validation data
    (None: there are none)."""
    return max((r for r in same if r["recipe"] not in WITH_VALIDATION), key=lambda r: r["acc"], default=None)


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    """The default (no lr given; ``val``: the same with validation data) within 1 point of the best
    recipe, never more than 0.5 below the converged probe, in at most 1.5x the time of the former default
    (the top third, or half with 10 or more images per class, at 1e-3 from a new head)."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        same = [r for r in rows if r["task"] == task]
        default = next((r for r in same if r["recipe"] == "default" and r["lr"] is None), None)
        for ours in [r for r in same if r["recipe"] in ("default", *WITH_VALIDATION) and r["lr"] is None]:
            lines += _against_best_and_probe(task, ours, same)
        if default is None:
            continue
        per_class = TASKS[task.split(" ")[0]][1]
        former = next(
            (
                r
                for r in same
                if r["recipe"] == ("last_n" if per_class >= 10 else "third") and r["lr"] == 1e-3
            ),
            None,
        )
        if former is not None:
            ratio = default["seconds"] / former["seconds"]
            lines.append(
                f"- [{'x' if ratio <= 1.5 else ' '}] {task}: default {default['seconds']:.1f} s = "
                f"{ratio:.2f}x "
                f"the former default ({former['recipe']} at 1e-3, {former['seconds']:.1f} s) (<= 1.5x)"
            )
    return lines


def _who(recipe: str) -> str:
    """``default``, or ``default with val`` for the default given validation data."""
    return "default" if recipe == "default" else f"default with {recipe}"


def _against_best_and_probe(task: str, ours: dict[str, Any], same: list[dict[str, Any]]) -> list[str]:
    """Acceptance 1 for one of the default's rows (``ours``) among its task's rows (``same``)."""
    name = _who(ours["recipe"])
    best, lines = _best(same), []
    if best is not None:
        gap = 100 * (best["acc"] - ours["acc"])
        lines.append(
            f"- [{'x' if gap <= 1.0 else ' '}] {task}: {name} {ours['acc']:.3f} vs best {best['acc']:.3f} "
            f"({best['recipe']} at lr {lr_text(best)}): {gap:.1f} points behind (<= 1){_paired(best, ours)}"
        )
    probe = next((r for r in same if r["recipe"] == "probe"), None)
    if probe is not None:
        below = 100 * (probe["acc"] - ours["acc"])
        lines.append(
            f"- [{'x' if below <= 0.5 else ' '}] {task}: {name} {ours['acc']:.3f} vs converged probe "
            f"{probe['acc']:.3f}: {max(below, 0):.1f} points below (<= 0.5)"
        )
    return lines


def confirm(
    rows: list[dict[str, Any]], args: argparse.Namespace, settings: dict[str, Any]
) -> tuple[list[str], int, int]:
    """Acceptance 1 on fresh seeds: the best (task, recipe, lr) of ``rows`` is chosen on their seeds, and
    a mean chosen as the highest of many is too high by about the seeds' spread (the rates and recipes
    that happened to draw good seeds win), so the default and that choice train again on ``--confirm``
    seeds none of ``rows`` used and are compared there, seed by seed (the default with validation data
    too, where ``rows`` hold it). A task whose best is the default itself has nothing to confirm. Returns
    the lines, the runs and how many of them were trained now."""
    names = {_name(t, b): (t, b) for b in args.backbones.split(",") for t in args.tasks.split(",")}
    chosen, lines = {}, {}
    for name in dict.fromkeys(r["task"] for r in rows):
        same = [r for r in rows if r["task"] == name]
        default = next((r for r in same if r["recipe"] == "default" and r["lr"] is None), None)
        best = _best(same)
        if best is None:
            continue
        if default is not None and (best is default or best["acc"] == default["acc"]):
            lines[name] = f"- [x] {name}: the default is the best on seeds 0-{args.seeds - 1}"
        elif default is not None and name in names:
            chosen[name] = best
    fresh = list(range(args.seeds, args.seeds + args.confirm))
    ours = ["default", *(r for r in WITH_VALIDATION if any(row["recipe"] == r for row in rows))]
    jobs = [
        (names[name][0], recipe, lr, seed, names[name][1])
        for name, best in chosen.items()
        for recipe, lr in (*((r, None) for r in ours), (best["recipe"], best["lr"]))
        for seed in fresh
    ]
    runs, trained = _train_all(jobs, args, settings)
    again = summarise(runs)
    seeds = f"seeds {fresh[0]}-{fresh[-1]}" if len(fresh) > 1 else f"seed {fresh[0]}"
    for name, best in chosen.items():
        same = {(r["recipe"], r["lr"]): r for r in again if r["task"] == name}
        rival, said = same[(best["recipe"], best["lr"])], []
        for recipe in ours:
            default = same[(recipe, None)]
            gap = 100 * (rival["acc"] - default["acc"])
            said.append(
                f"- [{'x' if gap <= 1.0 else ' '}] {name}: on {seeds}, "
                f"{_who(recipe)} {default['acc']:.3f} vs "
                f"{rival['acc']:.3f} for the best on seeds 0-{args.seeds - 1} ({best['recipe']} at lr "
                f"{lr_text(best)}): {gap:.1f} points behind (<= 1){_paired(rival, default)}"
            )
        lines[name] = "\n".join(said)
    order = dict.fromkeys(r["task"] for r in rows)
    return [lines[name] for name in order if name in lines], len(runs), trained


def _paired(best: dict[str, Any], default: dict[str, Any]) -> str:
    """`` (seed by seed: 1.2 +- 0.4)``: the mean and standard error of the per-seed differences in points
    (the same training images for both), which tell a real gap from the seeds' spread."""
    seeds = sorted(set(best["by_seed"]) & set(default["by_seed"]))
    if best is default or len(seeds) < 2:
        return ""
    gaps = [100 * (best["by_seed"][s] - default["by_seed"][s]) for s in seeds]
    error = statistics.stdev(gaps) / math.sqrt(len(gaps))
    return f" (seed by seed: {statistics.mean(gaps):.1f} +- {error:.1f})"


def lr_find_one(task: str, seed: int, backbone: str, *, weights_dir: Path, batch_size: int) -> dict[str, Any]:
    """``Trainer(model).lr_find(train)`` on a task's training set (drawn by ``seed``): the rate it suggests
    for ``lr``."""
    (x, y), _ = TASKS[task][0](seed)
    torch.manual_seed(seed)
    weights = real_weights.weights_file(weights_dir, backbone)
    model = build_model(
        real_weights.BACKBONES[backbone].arch, num_classes=int(y.max()) + 1, pretrained=str(weights)
    )
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    result = Trainer(model, progress=False, seed=seed, device="cpu").lr_find(train, start_lr=1e-5, end_lr=1.0)
    return {
        "task": _name(task, backbone),
        "seed": seed,
        "suggestion": result.suggestion,
    }


def good_rates(rates: dict[float, float], points: float = 2.0) -> tuple[float, float]:
    """The range of rates at which the mean accuracy is within ``points`` of the best rate's: from the
    lowest such rate to the highest, each widened halfway (in log scale) to the next rate measured (at
    either end of the grid, by half the step to its neighbour)."""
    grid = sorted(rates)
    best = max(rates.values())
    good = [i for i, lr in enumerate(grid) if rates[lr] >= best - points / 100]
    low, high = good[0], good[-1]
    below = grid[low - 1] if low > 0 else grid[0] ** 2 / grid[1]
    above = grid[high + 1] if high < len(grid) - 1 else grid[-1] ** 2 / grid[-2]
    return math.sqrt(grid[low] * below), math.sqrt(grid[high] * above)


def lr_find_check(found: list[dict[str, Any]], rows: list[dict[str, Any]], points: float = 2.0) -> list[str]:
    """Each task's suggestions (one per seed) against the range where the default, at the rates measured,
    was within ``points`` of its best rate (means over seeds; `good_rates`); the default's own rate too.
    The suggestion is one ``lr`` for head and blocks, what a given ``lr`` sets: on a far task, whose
    default trains its head slower than its blocks (`_rates`), the default's own run is no such rate."""
    lines = []
    for task in dict.fromkeys(row["task"] for row in found):
        far = TASKS[task.split(" ")[0]][2] == "far"
        default = [r for r in rows if r["task"] == task and r["recipe"] == "default"]
        default = [r for r in default if r["lr"] is not None or not far]
        rates = {(r["lr"] if r["lr"] is not None else r["lr_used"]): r["acc"] for r in default}
        if len(rates) < 2:
            continue
        low, high = good_rates(rates, points)
        suggested = [row["suggestion"] for row in found if row["task"] == task]
        inside = sum(low <= lr <= high for lr in suggested)
        own = next((r["lr_used"] for r in default if r["lr"] is None), None)
        own_text = "" if own is None else f"; the default's {own:g}: {'in' if low <= own <= high else 'out'}"
        table = ", ".join(f"{lr:g}: {acc:.3f}" for lr, acc in sorted(rates.items()))
        lines.append(
            f"- [{'x' if inside == len(suggested) else ' '}] {task}: lr_find suggests "
            f"{', '.join(f'{lr:.2g}' for lr in suggested)} ({inside} of {len(suggested)} in range); within "
            f"{points:g} points of the best rate: {low:.2g}..{high:.2g}{own_text} ({table})"
        )
    return lines


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated from {', '.join(TASKS)}")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument(
        "--lrs", help="comma-separated learning rates (or auto) for every recipe (default: per recipe)"
    )
    parser.add_argument(
        "--backbones",
        default="efficientnet_lite0",
        help=f"comma-separated from {', '.join(real_weights.BACKBONES)} (default efficientnet_lite0)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per (task, recipe, lr) (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="default 10 (the Trainer's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--workers", type=int, default=1, help="runs side by side, one process each (default 1)"
    )
    parser.add_argument(
        "--lr-find",
        action="store_true",
        help="also run lr_find on each task and seed, and check its suggestions",
    )
    parser.add_argument(
        "--augment",
        default="none",
        choices=list(AUGMENTS),
        help="the training images' augmentation: none (fixed tensors, the default), light (the folder "
        "loaders' default: random resized crop to 35-100 %% of the area and flip), noflip, mild (70-100 %%, "
        "no flip)",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=0,
        metavar="N",
        help="then train the default and each task's best recipe and rate again on N fresh seeds and "
        "compare them there (the best of many means is chosen partly by its seeds' luck)",
    )
    parser.add_argument("--weights-dir", help="where to write the converted weights (default: a temp dir)")
    parser.add_argument(
        "--runs",
        help="a JSON-lines file: each finished run is added to it, and runs already in it (same task, "
        "recipe, lr, seed, backbone, augment, epochs and batch size) are read instead of trained again, "
        "so an interrupted benchmark resumes and a table can grow by a recipe or a seed; start a new "
        "file after changing the code",
    )
    return parser.parse_args(argv)


def _rates(recipe: str, task: str, lrs: str | None) -> list[float | None]:
    """The rates ``recipe`` runs at on ``task``: ``--lrs`` or `LRS`, without the default's fixed rate that
    equals the one it chooses itself on that task (the ``auto`` run is that run). On a far task the
    default's head trains slower than its blocks (`recipe.finetune_rates`; the "far" tasks are the ones
    whose input shift is above `recipe.FAR_SHIFT`, README), so no fixed rate is the same run."""
    rates = [None if v == "auto" else float(v) for v in lrs.split(",")] if lrs else list(LRS[recipe])
    if recipe == "default" and None in rates and TASKS[task][2] != "far":
        rates = [lr for lr in rates if lr != default_finetune_lr(TASKS[task][1])]
    return rates


def _run_key(job: tuple[Any, ...], args: argparse.Namespace) -> str:
    return json.dumps([*job, args.augment, args.epochs, args.batch_size])


def _stored_runs(path: str | None) -> dict[str, dict[str, Any]]:
    """The runs a ``--runs`` file holds, by `_run_key`."""
    if path is None or not Path(path).exists():
        return {}
    lines = Path(path).read_text().splitlines()
    return {entry["key"]: entry["run"] for entry in map(json.loads, filter(None, lines))}


def _pool(args: argparse.Namespace, jobs: list[Any]) -> Any:
    """``args.workers`` spawned processes of ``args.threads`` torch threads each, or None (a null context)
    for one worker or no jobs: map the jobs with ``pool.map`` if ``pool`` else ``map``."""
    if args.workers < 2 or not jobs:
        return contextlib.nullcontext()
    return concurrent.futures.ProcessPoolExecutor(
        args.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
        initargs=(args.threads,),
    )  # fmt: skip


def _train_all(
    jobs: list[tuple[Any, ...]], args: argparse.Namespace, settings: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """Every job's run, in the jobs' order (those in the ``--runs`` file read from it), and how many
    were trained now."""
    done = _stored_runs(args.runs)
    todo = [job for job in jobs if _run_key(job, args) not in done]
    with _pool(args, todo) as pool:
        work = functools.partial(run_one, **settings)
        for job, run in zip(todo, (pool.map if pool else map)(work, *zip(*todo)) if todo else ()):
            done[_run_key(job, args)] = run
            if args.runs:
                with open(args.runs, "a") as file:
                    file.write(json.dumps({"key": _run_key(job, args), "run": run}) + "\n")
            print(
                f"{run['task']:<12} {run['recipe']:<10} lr={lr_text(run):<12} seed={run['seed']} "
                f"acc={run['acc']:.3f} {run['seconds']:.1f}s",
                flush=True,
            )
    return [done[_run_key(job, args)] for job in jobs], len(todo)


def _lr_find_all(
    backbones: list[str], tasks: list[str], args: argparse.Namespace, weights_dir: Path
) -> list[dict[str, Any]]:
    """`lr_find_one` for every backbone, task and seed, side by side in ``args.workers`` processes."""
    jobs = [(task, seed, backbone) for backbone in backbones for task in tasks for seed in range(args.seeds)]
    work = functools.partial(lr_find_one, weights_dir=weights_dir, batch_size=args.batch_size)
    with _pool(args, jobs) as pool:
        return list((pool.map if pool else map)(work, *zip(*jobs)))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(
        True
    )  # MNIST's near-zero activations ran 7x slower as denormals, for every recipe
    tasks, recipes = args.tasks.split(","), args.recipes.split(",")
    unknown = sorted(set(tasks) - set(TASKS)) + sorted(set(recipes) - set(RECIPES))
    unknown += sorted(set(args.backbones.split(",")) - set(real_weights.BACKBONES))
    if unknown:
        raise SystemExit(f"unknown task or recipe {unknown}; tasks: {list(TASKS)}, recipes: {list(RECIPES)}")
    backbones = args.backbones.split(",")
    jobs = [
        (task, recipe, lr, seed, backbone)
        for backbone in backbones
        for task in tasks
        for recipe in recipes
        for lr in _rates(recipe, task, args.lrs)
        for seed in range(args.seeds)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = Path(args.weights_dir or tmp)
        for backbone in backbones:  # converted once, before the processes start
            real_weights.weights_file(weights_dir, backbone)
        settings = {
            "weights_dir": weights_dir, "epochs": args.epochs, "batch_size": args.batch_size,
            "augment": args.augment,
        }  # fmt: skip
        started = time.perf_counter()
        runs, trained = _train_all(jobs, args, settings)
        found = _lr_find_all(backbones, tasks, args, weights_dir) if args.lr_find else []
        seconds = time.perf_counter() - started
        rows = summarise(runs)
        confirmed = confirm(rows, args, settings) if args.confirm else None
    read = f" ({len(runs) - trained} of them read from {args.runs})" if args.runs else ""
    print(
        f"\n{len(runs)} runs{read} in "
        f"{seconds:.0f} s, {args.workers} process(es) of "
        f"{args.threads} thread(s) on "
        f"{os.cpu_count()} CPUs, {args.epochs} epochs, batch {args.batch_size}, python "
        f"{platform.python_version()}, torch {torch.__version__}\n"
    )
    print(table(rows))
    print("\nAcceptance:")
    print("\n".join(acceptance(rows)))
    if confirmed is not None:
        lines, count, now = confirmed
        spent = time.perf_counter() - started - seconds
        print(f"\nAcceptance 1 on {args.confirm} fresh seeds ({count} runs, {now} trained in {spent:.0f} s):")
        print("\n".join(lines))
    if found:
        print("\nlr_find:")
        print("\n".join(lr_find_check(found, rows)))
    return rows


if __name__ == "__main__":
    main()
