"""A run folder's ``report.html``: what the run did and what its model gets wrong, in one offline page.

`build_run_report` gathers the parts (the plan from ``transferkit.json`` and the history, the curves,
the final metrics, the per-class pictures and tables, the interpretation galleries, timing and the
environment) as plain data and `transferkit.viz.report` renders them. It reuses the pictures the run
already drew (``history.png``, ``confusion.png``, ``class_iou.png``, ``predictions.png``) and adds one
pass of the model over the validation loader (`transferkit.interpret.interpret`).

A task's interpretation comes from `GALLERIES`, by task name: a function of ``(model, loader, device, *,
progress, cam)`` returning report blocks (`transferkit.viz.report.Gallery`, ``Picture``, ``Table``,
``Note``); its tables go to the "Per class" section, the rest to "Interpretation". A task without an
entry gets a note there instead.
"""

from __future__ import annotations

import importlib.metadata
import io
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from .. import __version__
from ..interpret import interpret, show_top_losses
from ..models.model import TransferModel
from ..training.progress import tqdm
from ..viz import plots
from ..viz.report import (
    Block,
    Gallery,
    GalleryItem,
    Note,
    Picture,
    Report,
    Section,
    Table,
    reliability_svg,
    thumbnail,
    write_report,
)

__all__ = ["GALLERIES", "REPORT_FILE", "TOP_LOSSES", "WORST", "build_run_report", "write_run_report"]

REPORT_FILE = "report.html"
TOP_LOSSES = 12  # thumbnails in the top-losses gallery
WORST = 4  # images in each segmentation / detection gallery
_THUMB = 128  # their longer side, in pixels

Galleries = Callable[..., list[Block]]  # (model, loader, device, *, progress, cam) -> blocks


def _thumbnail(path: str | None) -> bytes | None:
    """A small PNG of the image file, or None without a path or when it cannot be read (any longer)."""
    try:
        return None if path is None else thumbnail(path, _THUMB)
    except OSError:  # changed since training read it: the caption still says what it was
        return None


def _classification_blocks(
    model: TransferModel, loader: DataLoader, device: str, *, progress: bool, cam: bool = False
) -> list[Block]:
    """Top losses with thumbnails, most confused pairs, per-class scores and calibration; with ``cam``
    the top losses again with their class-activation maps (the ``gradcam`` extra)."""
    interp = interpret(model, loader, device=device, progress=progress)
    items = []
    for s in interp.top_losses(TOP_LOSSES):
        caption = f"true: {s.true}\npredicted: {s.predicted} ({s.probability:.2f})\nloss {s.loss:.3f}"
        image = _thumbnail(s.path)
        items.append(GalleryItem(image, caption + (f"\n{Path(s.path).name}" if s.path else "")))
    pairs = [[true, predicted, count] for true, predicted, count in interp.most_confused()[:10]]
    ece, bins = interp.calibration(n_bins=10)
    per_class = [[c.name, c.precision, c.recall, c.f1, c.support] for c in interp.per_class()]
    maps: list[Block] = []
    if cam:
        figure = show_top_losses(interp, model, loader, k=min(8, len(interp)))
        caption = "Where the model looked (Grad-CAM, the predicted class) on the top losses."
        maps.append(Picture("Activation maps", _png(figure), caption))
    return maps + [
        Gallery(
            "Top losses",
            items,
            note=f"The {len(items)} validation images (of {len(interp)}) the model was most wrong about: "
            "highest cross-entropy first, with the probability of the predicted class.",
        ),
        Table("Most confused", ["true", "predicted", "images"], pairs, note="" if pairs else "No mistakes."),
        Table("Precision, recall, F1", ["class", "precision", "recall", "F1", "support"], per_class),
        Picture(
            "Calibration",
            reliability_svg([(b.lower, b.upper, b.confidence, b.accuracy, b.count) for b in bins], ece),
            caption=f"Expected calibration error {ece:.4f} (top-1, 10 bins): bars are the accuracy of the "
            "images in each confidence bin; a calibrated model's bars reach the dashed diagonal.",
        ),
    ]


def _png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _segmentation_blocks(
    model: TransferModel, loader: DataLoader, device: str, *, progress: bool, **_: Any
) -> list[Block]:
    """Per-class IoU and the images with the lowest IoU, true and predicted masks overlaid."""
    interp = interpret(model, loader, device=device, progress=progress)
    rows = [[name, iou] for name, iou in interp.per_class_iou()]
    note = (
        f"mIoU {interp.miou():.4f}, pixel accuracy {interp.pixel_accuracy():.4f} over {len(interp)} images."
    )
    blocks: list[Block] = [Table("Intersection over union", ["class", "IoU"], rows, note=note)]
    worst = interp.worst(WORST)
    if worst:
        caption = "The validation images with the lowest IoU: each with its true, then its predicted mask."
        blocks.append(Picture("Lowest IoU", _png(interp.show_worst(len(worst))), caption))
    return blocks


def _detection_blocks(
    model: TransferModel, loader: DataLoader, device: str, *, progress: bool, **_: Any
) -> list[Block]:
    """Per-class AP and the images with the most missed and the most false boxes, drawn."""
    interp = interpret(model, loader, device=device, progress=progress)
    rows = [[c.name, c.ap, c.ap_50, c.true_boxes] for c in interp.per_class_ap()]
    blocks: list[Block] = [Table("Average precision", ["class", "AP", "AP@0.5", "true boxes"], rows)]
    for title, samples, what in (
        ("Most missed boxes", interp.most_missed(WORST), "true boxes (dashed) no prediction found"),
        ("Most false boxes", interp.most_false(WORST), "predicted boxes (solid) matching no true box"),
    ):
        if samples:
            blocks.append(Picture(title, _png(interp.show(samples)), f"The images with the most {what}."))
    return blocks


GALLERIES: dict[str, Galleries] = {
    "classification": _classification_blocks,
    "segmentation": _segmentation_blocks,
    "detection": _detection_blocks,
}
"""The interpretation blocks of each task, by ``model.task``."""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _plan(model: TransferModel, meta: dict[str, Any], history: Sequence[dict[str, Any]]) -> Section:
    config = model.config
    settings = [
        ["task", model.task],
        ["backbone", config.get("backbone", "?")],
        ["neck", config.get("neck", meta.get("neck", "?"))],
        ["head", config.get("head", meta.get("head", "?"))],
        ["pretrained", str(meta.get("pretrained", config.get("pretrained", "?")))],
        ["freeze", meta.get("freeze", "?")],
        ["epochs", meta.get("epochs", len(history))],
        ["learning rate", "default" if meta.get("lr") is None else f"{meta['lr']:g}"],
        ["batch size", meta.get("batch_size", "?")],
        ["image size", "the backbone's" if meta.get("image_size") is None else f"{meta['image_size']} px"],
        ["data", meta.get("data", "?")],
        [
            "classes",
            f"{len(model.classes)}: {', '.join(model.classes[:20])}"
            + (" ..." if len(model.classes) > 20 else ""),
        ],
        ["best epoch", meta.get("best_epoch", "?")],
    ]
    blocks, phases = len(model.blocks), any(row.get("phase") for row in history)  # a recipe's phases
    schedule = [
        [row["epoch"] + 1, *([row.get("phase", "")] if phases else []),
         f"{row.get('trainable_blocks', '?')}/{blocks}",
         f"{row['lr']:.3g}" if isinstance(row.get("lr"), float) else row.get("lr", "")]
        for row in history
    ]  # fmt: skip
    return Section(
        "Plan",
        [
            Table("Model and recipe", ["setting", "value"], [[k, str(v)] for k, v in settings]),
            Table(
                "Schedule",
                ["epoch", *(["phase"] if phases else []), "trainable blocks", "learning rate"],
                schedule,
                note=f"Trainable blocks of the backbone's {blocks}; the head always trains.",
            ),
        ],
    )


def _curves(folder: Path, history: Sequence[dict[str, Any]]) -> Section:
    keys = [k for k in history[0] if k.endswith("loss") or k.startswith("val_")] if history else []
    rows = [[row["epoch"] + 1, *(row.get(k, "") for k in keys)] for row in history]
    blocks: list[Block] = []
    if (folder / "history.png").is_file():
        blocks.append(Picture("", folder / "history.png", "Loss and metrics per epoch (history.png)."))
    else:
        try:
            blocks.append(Picture("", _png(plots.plot_history(history)), "Loss and metrics per epoch."))
        except ImportError as err:
            blocks.append(Note(f"No curves: {err}"))
    blocks.append(Table("Per epoch", ["epoch", *keys], rows))
    return Section("Curves", blocks)


def _metrics(meta: dict[str, Any], history: Sequence[dict[str, Any]]) -> Section:
    metrics = meta.get("metrics") or {k: v for k, v in history[-1].items() if k.startswith("val_")}
    rows = [[name, float(value)] for name, value in metrics.items()]
    best = meta.get("best_epoch")
    note = f"The kept weights: epoch {best}." if best else ""
    return Section("Final metrics", [Table("", ["metric", "value"], rows, note=note)], anchor="metrics")


def _per_class(folder: Path) -> list[Block]:
    found = {
        "confusion.png": "Confusion matrix (rows: true class, columns: predicted).",
        "class_iou.png": "Intersection over union of each class.",
    }
    return [Picture("", folder / name, text) for name, text in found.items() if (folder / name).is_file()]


def _timing(history: Sequence[dict[str, Any]], train_images: int | None) -> Section:
    rows = []
    for row in history:
        seconds = row.get("seconds")
        rate = train_images / seconds if train_images and seconds else None
        rows.append(
            [row["epoch"] + 1, seconds if seconds is not None else "", "" if rate is None else f"{rate:.1f}"]
        )
    total = sum(float(row.get("seconds") or 0) for row in history)
    mean = total / len(history) if history else 0.0
    rate = f"{train_images * len(history) / total:.1f}" if train_images and total else "?"
    summary = [["epochs", str(len(history))], ["seconds in all", f"{total:.1f}"],
               ["seconds per epoch", f"{mean:.2f}"], ["training images per second", rate],
               ["training images", str(train_images or "?")]]  # fmt: skip
    return Section(
        "Timing",
        [
            Table("", ["", "value"], summary, note="An epoch's seconds include its validation pass."),
            Table("Per epoch", ["epoch", "seconds", "training images/s"], rows),
        ],
    )


def _environment(meta: dict[str, Any], device: str) -> Section:
    rows = [
        ["python", platform.python_version()],
        *([name, _version(name)] for name in ("torch", "torchvision", "timm")),
        ["transferkit", __version__],
        ["transferkit of the run", meta.get("transferkit_version", "?")],
        ["device", device],
        ["platform", platform.platform(terse=True)],
    ]
    return Section("Environment", [Table("", ["", "version"], rows)])


def build_run_report(
    folder: Path,
    model: TransferModel,
    meta: dict[str, Any],
    history: Sequence[dict[str, Any]],
    loader: DataLoader,
    *,
    train_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    cam: bool = False,
) -> Report:
    """The `Report` of the run in ``folder``: its plan, curves, metrics, per-class results, galleries.

    Args:
        folder: The run folder; its pictures (``history.png``, ``confusion.png``, ...) are reused.
        model: The run's trained model.
        meta: Its ``transferkit.json``.
        history: Its ``history.json`` (one dict per epoch).
        loader: The validation split in file order, with the model's eval transforms.
        train_images: How many training images an epoch read (for images per second), when known.
        device: Where the interpretation pass runs (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        progress: Show a progress bar over the steps.
        cam: Add the top losses' class-activation maps (a classifier; the ``gradcam`` extra).

    Examples:
        >>> report = build_run_report(Path("runs/ab"), model, meta, history, val_loader)  # doctest: +SKIP
        >>> [s.title for s in report.sections]  # doctest: +SKIP
        ['Plan', 'Curves', 'Final metrics', 'Per class', 'Interpretation', 'Timing', 'Environment']
    """
    with tqdm(total=3, desc="report", disable=not progress, leave=False) as bar:
        sections = [_plan(model, meta, history), _curves(folder, history), _metrics(meta, history)]
        bar.update()
        galleries = GALLERIES.get(model.task)
        found: list[Block] = (
            [] if galleries is None else galleries(model, loader, device, progress=progress, cam=cam)
        )
        bar.update()
        tables = [b for b in found if isinstance(b, Table)]
        per_class = _per_class(folder) + tables
        if (folder / "predictions.png").is_file():
            found.append(
                Picture("Predictions", folder / "predictions.png", "Validation images, mistakes first.")
            )
        if galleries is None:
            found.insert(
                0, Note(f"Interpretation galleries for {model.task} models are not part of the report yet.")
            )
        ran_on = str(next(model.parameters()).device) if galleries is not None else device
        sections += [
            Section(
                "Per class",
                per_class or [Note("No per-class pictures in this run folder.")],
                anchor="per-class",
            ),
            Section(
                "Interpretation", [b for b in found if not isinstance(b, Table)], anchor="interpretation"
            ),
            _timing(history, train_images),
            _environment(meta, ran_on),
        ]
        bar.update()
    title = f"{folder.name}: {model.config.get('backbone', '')} {model.task} run"
    return Report(title, sections, subtitle=f"Run folder {folder}; {len(model.classes)} classes.")


def write_run_report(
    folder: Path,
    model: TransferModel,
    meta: dict[str, Any],
    history: Sequence[dict[str, Any]],
    loader: DataLoader,
    *,
    out: Path | None = None,
    train_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
    cam: bool = False,
) -> Path:
    """Build the run's report (`build_run_report`) and write it to ``out`` (default ``folder/report.html``).

    Examples:
        >>> write_run_report(Path("runs/ab"), model, meta, history, val_loader)  # doctest: +SKIP
        PosixPath('runs/ab/report.html')
    """
    report = build_run_report(
        folder,
        model,
        meta,
        history,
        loader,
        train_images=train_images,
        device=device,
        progress=progress,
        cam=cam,
    )
    return write_report(report, folder / REPORT_FILE if out is None else out)
