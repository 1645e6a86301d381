"""What both ``transferkit demo`` runs share: their settings, their data folder's marker, and training,
saving and reloading a run as ``transferkit train`` and ``eval`` do."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from ..atomic import refuse_symlink, write_text
from .evaluate import evaluate_folder
from .runs import _fit_and_save, _load_run, _trainer

__all__ = ["DEMO_MARKER", "DemoSettings", "fresh_demo_data", "mark_demo_data", "train_and_reload"]

DEMO_MARKER = ".transferkit-demo"


class DemoSettings(NamedTuple):
    """What ``transferkit demo`` generates and how it trains (``--quick`` uses the small set)."""

    per_class: dict[str, int]
    image_size: int
    epochs: int
    freeze: str
    lr: float = 2e-3
    batch_size: int = 32


def fresh_demo_data(folder: Path) -> None:
    """Remove the data a previous demo wrote there; refuse to touch a folder the demo did not make."""
    refuse_symlink(folder, "demo data folder")
    if not folder.exists():
        return
    if not (folder / DEMO_MARKER).is_file():
        raise FileExistsError(
            f"{folder} exists and was not written by transferkit demo; move it away or pass --out NEW_FOLDER"
        )
    shutil.rmtree(folder)


def mark_demo_data(data: Path) -> None:
    """Mark ``data`` as the demo's own, which the next demo may delete (`fresh_demo_data`)."""
    write_text(data / DEMO_MARKER, "written by transferkit demo; the next demo deletes and rewrites it\n")


def train_and_reload(
    model: Any,
    loaders: dict[str, Any],
    out: Path,
    *,
    data: Path,
    freeze: str,
    epochs: int,
    settings: DemoSettings,
    seed: int,
) -> tuple[list[dict[str, Any]], Any, Any, dict[str, Any], dict[str, float], int]:
    """Train and save as ``transferkit train`` does, then reload the run folder and evaluate it on val.

    Returns ``(history, plots, reloaded model, run meta, val metrics, val image count)``.
    """
    meta = {
        "task": model.task,
        "classes": list(loaders["train"].dataset.classes),
        "image_size": settings.image_size,
        "data": str(data.resolve()),
        "freeze": freeze,
        "epochs": epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "transferkit_version": __version__,
    }
    trainer = _trainer(model, out, epochs=epochs, lr=settings.lr, device="auto", seed=seed)
    history, plots = _fit_and_save(trainer, loaders, out, meta=meta)
    reloaded, meta = _load_run(str(out))
    metrics, count = evaluate_folder(reloaded, meta, data / "val")
    return history, plots, reloaded, meta, metrics, count
