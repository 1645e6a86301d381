"""Run folders: train a model and save it with what the other commands read back, and load one again.

A run folder holds what ``model.save`` writes (``config.json``, ``model.safetensors``; the class names
travel in the config) plus `META_FILE` (the task, the image size and the training arguments, written
before training starts so that ``train --resume`` can read them), `HISTORY_FILE`, ``history.png``,
``predictions.png`` and, for a run with a validation split, ``report.html``; while training,
`CHECKPOINT_DIR` holds the Trainer's checkpoint. ``train`` and ``demo`` write one with `_trainer` and
`_fit_and_save`; ``eval``, ``predict``, ``report`` and ``demo`` read one with `_load_run`. Every file
is written atomically (`transferkit.atomic`: whole or not at all, never through a symbolic link), and
`META_FILE` is checked where it is read (`transferkit.cli.meta`). Which entries a run writes is
`transferkit.cli.folder`'s list. Also here: the printing helpers every command uses.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..atomic import write_text
from ..io.hub import is_hub_spec
from ..models.loading import load_model
from ..models.model import TransferModel
from ..tasks import get_task
from ..training import CSVLogger, MLflowLogger, TensorBoard, Trainer
from ..training.progress import bar_renders
from .folder import (
    CHECKPOINT_DIR,
    HISTORY_CSV,
    HISTORY_FILE,
    MLFLOW_DIR,
    TENSORBOARD_DIR,
    refuse_linked_entries,
)
from .meta import META_FILE, RunMetaError, parse_run_meta
from .run_report import write_run_report


class Interrupted(Exception):
    """Ctrl-C during training; the run folder's checkpoint holds the ``epochs_done`` completed epochs."""

    def __init__(self, epochs_done: int) -> None:
        super().__init__(f"interrupted after {epochs_done} epoch(s)")
        self.epochs_done = epochs_done


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
    sizes = ", ".join(f"{len(cast(Sized, loader.dataset))} {split}" for split, loader in loaders.items())
    return f"{sizes} images, {len(classes)} classes ({', '.join(classes)})"


def _resume_command(out: Path) -> str:
    return f"transferkit train --resume --out {shlex.quote(str(out))}"


def _read_meta(directory: Path) -> dict[str, Any]:
    """``directory``'s `META_FILE`, checked (`transferkit.cli.meta`); ``{}`` when there is none.

    Raises:
        RunMetaError: The file is damaged, or holds what transferkit does not write.
    """
    path = directory / META_FILE
    if not path.exists():
        return {}
    if not path.is_file():
        raise RunMetaError(f"{path} is not a file", "move it away, or train the run again into a new --out")
    return parse_run_meta(path.read_bytes(), path)


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` to ``directory``'s `META_FILE`, atomically: a reader sees the old file or the new."""
    write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")


def _load_run(folder: str) -> tuple[TransferModel, dict[str, Any]]:
    """The model in a run folder and its ``transferkit.json`` (defaults when the folder lacks one).

    The class names are the model's own (``model.classes``); run folders saved before the names
    travelled with the model get them from ``transferkit.json``.
    """
    if is_hub_spec(folder):
        model = load_model(folder)
        return model, {"task": model.task, "classes": model.classes, "image_size": None}
    directory = _existing_dir(folder, "--model")
    meta = _read_meta(directory)
    if meta.get("status") == "training" and not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{directory} holds a run that has not finished (interrupted, or still training); finish it "
            f"with: {_resume_command(directory)}"
        )
    model = load_model(directory)
    if model.config.get("classes") is None and meta.get("classes"):
        if len(meta["classes"]) != model.num_classes:
            raise ValueError(
                f"{directory / META_FILE} lists {len(meta['classes'])} classes but the model has "
                f"{model.num_classes} outputs; the run folder is inconsistent, train again or fix 'classes'"
            )
        model.classes = meta["classes"]
    if model.config.get("data_config") is None and meta.get("image_size"):
        # saved before the model kept its preprocessing: the run's size is what it was trained at
        model.data_config = {"input_size": (model.config.get("in_chans", 3), *[meta["image_size"]] * 2)}
    meta.update(task=model.task, classes=model.classes)
    meta.setdefault("image_size", None)
    return model, meta


def _history_table(history: list[dict[str, Any]], num_blocks: int) -> str:
    shown = ("train_loss", "val_loss", "val_acc", "val_miou", "val_map", "val_map_50")
    keys = [k for k in shown if any(k in row for row in history)]
    lines = ["epoch  blocks  " + "  ".join(f"{k:>10}" for k in keys)]
    for row in history:
        values = "  ".join(f"{row[k]:>10.4f}" if k in row else f"{'-':>10}" for k in keys)
        blocks = f"{row.get('trainable_blocks', '?')}/{num_blocks}"
        lines.append(f"{row['epoch'] + 1:>5}  {blocks:>6}  {values}")
    return "\n".join(lines)


def _best_row(history: list[dict[str, Any]], monitor: str = "val_loss") -> dict[str, Any]:
    """The epoch whose weights the Trainer keeps (it restores the best by default): lowest ``monitor``
    when it is a loss, else highest (detection's ``val_map``); the last epoch without validation."""
    if monitor.startswith("val_") and all(monitor in row for row in history):
        sign = 1 if monitor.endswith("loss") else -1
        return min(history, key=lambda row: sign * row[monitor])
    return history[-1]


def _write_plots(
    out: Path, history: list[dict[str, Any]], model: TransferModel, loader: Any, classes: list[str]
) -> list[Path]:
    """Write ``history.png`` and ``predictions.png``; without matplotlib, say in one line how to get them."""
    from ..viz import pictures, plots

    written = [out / "history.png", out / "predictions.png"]
    try:
        plots.require_matplotlib()
    except ImportError as err:
        _say(f"note: plots skipped: {err}")
        for stale in written:  # an earlier run's plots must not pass for this one's
            stale.unlink(missing_ok=True)
        return []
    plots.plot_history(history, written[0])
    pictures.show_predictions(model, _grid_samples(model, loader.dataset, 16), written[1], classes=classes)
    return written + pictures.pictures(model.task).metrics(model, loader, out)


def _grid_samples(model: TransferModel, dataset: Dataset, count: int) -> DataLoader:
    """One batch of ``count`` samples for ``predictions.png``: the model's mistakes first, worst first
    (`transferkit.tasks.Task.errors`), then samples spread evenly through ``dataset``.

    Spread, because folder datasets are ordered by class and the first ``count`` samples would all show
    the same class; mistakes first, because a grid of right answers tells nothing about a model that
    gets one image in ten wrong.
    """
    collate = get_task(model.task).collate_fn
    size = len(cast(Sized, dataset))  # the folder datasets all have a length
    errors = _sample_errors(model, DataLoader(dataset, batch_size=32, collate_fn=collate)) or []
    wrong = sorted((i for i, error in enumerate(errors) if error > 0), key=lambda i: -errors[i])
    taken = set(wrong)
    spread = [i for i in range(0, size, max(1, size // count)) if i not in taken]
    return DataLoader(Subset(dataset, (wrong + spread)[:count]), batch_size=count, collate_fn=collate)


@torch.no_grad()
def _sample_errors(model: TransferModel, loader: DataLoader) -> list[float] | None:
    """`Task.errors` of every sample of ``loader``, in order; None for a task that does not rank them."""
    task, device = get_task(model.task), next(model.parameters()).device
    was_training, errors = model.training, []
    model.eval()
    try:
        for inputs, targets in loader:
            outputs = task.float_outputs(model(task.as_batch(inputs).to(device)), torch.device("cpu"))
            found = task.errors(outputs, targets)
            if found is None:
                return None
            errors += found.tolist()
    finally:
        model.train(was_training)
    return errors


def _trainer(
    model: TransferModel,
    out: Path,
    *,
    epochs: int,
    lr: float | None,
    device: str,
    seed: int,
    checkpoint: bool = False,
    resume: bool = False,
    label_smoothing: float = 0.0,
    tensorboard: bool = False,
    mlflow: dict[str, Any] | None = None,
) -> Trainer:
    """The Trainer of a run into ``out``; building it checks every argument, and writes nothing.

    With ``checkpoint`` it checkpoints into `CHECKPOINT_DIR` every epoch (``resume`` continues from there);
    the history goes to `HISTORY_CSV` as it trains (and to `TENSORBOARD_DIR` with ``tensorboard``). With
    ``mlflow`` (the run's options, logged as params) an `MLflowLogger` records it in `MLFLOW_DIR`, or in
    the store the ``MLFLOW_TRACKING_URI`` environment variable names.

    Raises:
        ValueError, TypeError: An argument the Trainer refuses (``lr=inf``, ``label_smoothing=5``).
    """
    callbacks: list[Any] = [CSVLogger(out / HISTORY_CSV)]  # written as it goes: readable mid-run
    if tensorboard:
        callbacks.append(TensorBoard(out / TENSORBOARD_DIR))
    if mlflow is not None:
        store = None if os.environ.get("MLFLOW_TRACKING_URI") else out / MLFLOW_DIR
        callbacks.append(MLflowLogger(store, run_name=out.name, params=mlflow))
    return Trainer(
        model, epochs=epochs, lr=lr, device=device, seed=seed,
        checkpoint_dir=out / CHECKPOINT_DIR if checkpoint else None, resume=resume,
        label_smoothing=label_smoothing, callbacks=callbacks,
    )  # fmt: skip


def _fit_and_save(
    trainer: Trainer, loaders: dict[str, DataLoader], out: Path, *, meta: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Train, print the epoch table, save the model, its metadata, the history and the plots.

    ``meta`` goes to `META_FILE` first (``"status": "training"``), after a check that no entry the run
    writes is a symbolic link. Epochs are counted from 1 in everything written for people,
    ``best_epoch`` included; ``history.json`` keeps the Trainer's 0-based ``epoch`` index.

    With a ``val`` loader it then writes the run's ``report.html`` (`transferkit.cli.run_report`).

    Returns:
        The history (one dict per epoch) and the pictures and report written (no plots without
        matplotlib; no report without a validation split).

    Raises:
        FileExistsError: An entry the run writes in ``out`` is a symbolic link; nothing was written.
        Interrupted: Ctrl-C during training; the checkpoint is kept.
    """
    model, checkpoints, resume = trainer.model, trainer.checkpoint_dir, trainer.resume
    refuse_linked_entries(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_meta(out, {**meta, "status": "training"})
    started = time.perf_counter()
    try:
        history = trainer.fit(loaders)
    except KeyboardInterrupt:
        raise Interrupted(len(trainer.history)) from None
    elapsed = time.perf_counter() - started
    _say("", _history_table(history, len(model.blocks)))
    monitor = trainer.best.monitor
    best = _best_row(history, monitor)
    took = f"{elapsed:.0f}s since resuming" if resume else f"{elapsed:.0f}s"
    if monitor in best and monitor.startswith("val_"):
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
        which = "lowest" if monitor.endswith("loss") else "highest"
        kept = f"kept the weights of epoch {best['epoch'] + 1} ({which} {monitor}): {metrics}"
        _say(f"trained {_count(len(history), 'epoch')} in {took}; {kept}")
    else:
        _say(f"trained {_count(len(history), 'epoch')} in {took} (no val split: kept the last weights)")
    model.save(out)
    meta = {
        **meta,
        "classes": model.classes,
        "status": "done",
        "best_epoch": best["epoch"] + 1,  # as printed: epochs count from 1
        "metrics": {k: v for k, v in best.items() if k.startswith("val_")},
    }
    _write_meta(out, meta)
    write_text(out / HISTORY_FILE, json.dumps(history, indent=2) + "\n")
    plots = _write_plots(out, history, model, loaders.get("val", loaders["train"]), model.classes)
    if "val" in loaders:
        train_images = len(cast(Sized, loaders["train"].dataset))
        progress = trainer.show_progress and bar_renders()
        try:
            plots.append(write_run_report(
                out, model, meta, history, loaders["val"], train_images=train_images,
                device=str(trainer.device), progress=progress,
            ))  # fmt: skip
        except (OSError, ValueError) as err:  # the run is saved: a report that fails must not fail it
            again = f"transferkit report {shlex.quote(str(out))}"
            _say(f"note: report.html not written ({err}); write it with: {again}")
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # a finished run needs no optimizer state
    return history, plots
