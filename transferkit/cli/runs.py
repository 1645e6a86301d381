"""Run folders: train a model and save it with what the other commands read back, and load one again.

A run folder holds what ``model.save`` writes (``config.json``, ``model.safetensors``) plus `META_FILE`
(the task, the class names and the image size), `HISTORY_FILE` and, when matplotlib is installed,
``history.png`` and ``predictions.png``. ``train`` and ``demo`` write one with `_fit_and_save`; ``eval``,
``predict`` and ``demo`` read one with `_load_run`. Also here: the printing helpers every command uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, Subset

from ..model import TransferModel, load_model
from ..training import Trainer

META_FILE = "transferkit.json"
HISTORY_FILE = "history.json"


def _say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _existing_dir(path: str, flag: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder")
    return folder


def _describe_data(loaders: dict[str, DataLoader], classes: list[str]) -> str:
    sizes = ", ".join(f"{len(loader.dataset)} {split}" for split, loader in loaders.items())
    return f"{sizes} images, {len(classes)} classes ({', '.join(classes)})"


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
    from .. import plots

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
    """Train, print the epoch table, save the model, its metadata, the history and the plots.

    Returns:
        The history (one dict per epoch) and the plot files written (none without matplotlib).
    """
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
