"""Training curves and prediction grids, drawn with matplotlib (a dependency, imported only to draw), and
`display_images`, the one place that undoes a model input's normalisation for a picture.

matplotlib is imported only when a plot is drawn, and only through its object-oriented ``Figure`` (never
``pyplot``), so importing this module costs nothing, no global backend is switched, and figures do not
pile up in pyplot's registry when drawn in a loop.

Examples:
    >>> history = Trainer(model, epochs=5).fit(loaders)  # doctest: +SKIP
    >>> plot_history(history, "runs/shapes/history.png")  # doctest: +SKIP
    >>> show_predictions(model, loaders["val"], "runs/shapes/predictions.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..models.classes import dataset_classes
from ..preprocessing import DEFAULT_DATA_CONFIG, loader_data_config

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "INSTALL_HINT",
    "display_images",
    "draw_classification",
    "draw_segmentation",
    "new_figure",
    "plot_history",
    "require_matplotlib",
    "save_figure",
]

INSTALL_HINT = "pip install matplotlib (a transferkit dependency missing from this environment)"

_GOOD, _BAD = "#1a7f37", "#cf222e"  # title colours of right and wrong predictions
_IGNORE = 255
_OVERLAY_ALPHA = 0.65
_LUMA = np.array([0.299, 0.587, 0.114])


def require_matplotlib() -> None:
    """Raise ``ImportError`` with the install command when matplotlib is missing.

    Raises:
        ImportError: matplotlib cannot be imported.

    Examples:
        >>> require_matplotlib()  # silent when matplotlib is installed
    """
    try:
        import matplotlib  # noqa: F401  (the top-level import fails first when it is missing or blocked)
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as err:
        raise ImportError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from err


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` made without ``pyplot`` (no global state, no backend switched); ``kwargs``
    go to ``Figure`` (``figsize=(8, 4)``)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike[str] | None) -> None:
    """Writes ``fig`` as a PNG to ``path`` atomically (parent folders made); None writes nothing."""
    if path is None:
        return
    (path := Path(path)).parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"  # not from the temporary file's name
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format=fmt))


# --------------------------------------------------------------------------------------------- history


def _unfreeze_epochs(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, int]]:
    """``(epoch, blocks before, blocks after)`` for each epoch that trains more blocks than the one before."""
    counts = [row.get("trainable_blocks") for row in history]
    marks = []
    for i in range(1, len(history)):
        before, after = counts[i - 1], counts[i]
        if before is not None and after is not None and after > before:
            marks.append((int(history[i]["epoch"]), int(before), int(after)))
    return marks


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [row for row in history if row.get(key) is not None]
    return [int(row["epoch"]) + 1 for row in rows], [float(row[key]) for row in rows]


def _mark_unfreezing(ax: Axes, marks: list[tuple[int, int, int]], label: bool) -> None:
    for i, (epoch, before, after) in enumerate(marks):
        # Epochs are drawn 1-based, like the progress bar; the line sits where the wider epoch starts.
        x = epoch + 1 - 0.5
        ax.axvline(
            x,
            color="0.45",
            linestyle="--",
            linewidth=1,
            label="blocks unfrozen" if label and i == 0 else None,
        )
        # At the bottom: curves start high on the loss panel and low-ish on the metric panel's left.
        ax.text(
            x,
            0.02,
            f"{before}\u2192{after} blocks ",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="bottom",
            ha="right",
            fontsize=8,
            color="0.3",
        )


def plot_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str] | None = None) -> Figure:
    """Loss and metric curves of a training run, with the epochs where backbone blocks unfroze marked.

    The left panel holds the losses (``train_loss``, ``val_loss``), the right one the metrics (``val_acc``,
    ``val_miou``, ``val_top5``; fractions in [0, 1]). Epochs are numbered from 1, as the progress bar shows
    them. A dashed line marks each epoch that trains more blocks than the one before (``gradual``), labelled
    with the block counts.

    Args:
        history: What ``Trainer.fit`` returned (or ``history.json`` loaded): one dict per epoch with
            ``epoch`` and any of the keys above, plus ``trainable_blocks``.
        path: Where to write the PNG (parent folders are created); None only returns the figure.

    Returns:
        The matplotlib ``Figure`` (two axes).

    Raises:
        ValueError: An empty history, or rows without ``epoch``.
        ImportError: matplotlib is not installed (the message gives the install command).

    Examples:
        >>> history = [
        ...     {"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.5, "trainable_blocks": 2},
        ...     {"epoch": 1, "train_loss": 0.6, "val_loss": 0.7, "val_acc": 0.7, "trainable_blocks": 4},
        ... ]
        >>> fig = plot_history(history)  # the line at epoch 2 reads "2->4 blocks"
        >>> len(fig.axes)
        2
    """
    history = list(history)
    if not history:
        raise ValueError("history is empty; pass what Trainer.fit() returned (one dict per epoch)")
    if not all(isinstance(row, Mapping) and "epoch" in row for row in history):
        raise ValueError("every history row must be a dict with an 'epoch' key, as Trainer.fit() returns")
    keys = list(dict.fromkeys(k for row in history for k in row))
    losses = [k for k in keys if k.endswith("loss")]
    metrics = [k for k in keys if k.startswith(("train_", "val_")) and not k.endswith("loss")]
    marks = _unfreeze_epochs(history)

    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(10, 4))
    loss_ax, metric_ax = fig.subplots(1, 2)
    epochs = [int(row["epoch"]) + 1 for row in history]
    for ax, names, title in ((loss_ax, losses, "loss"), (metric_ax, metrics, "metrics (fraction)")):
        for name in names:
            ax.plot(*_series(history, name), marker="o", markersize=4, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _mark_unfreezing(ax, marks, label=True)
    values = [v for name in losses for v in _series(history, name)[1]]
    if values and min(values) > 0 and max(values) > 20 * float(np.median(values)):
        loss_ax.set_yscale("log")  # an early spike would flatten the rest of the curves
    if metrics:
        metric_ax.set_ylim(0, 1.02)
    else:
        note = "no validation metrics\n(no val split)"
        metric_ax.text(0.5, 0.5, note, ha="center", va="center", transform=metric_ax.transAxes, color="0.4")
    for ax in (loss_ax, metric_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(_history_title(history))
    save_figure(fig, path)
    return fig


def _history_title(history: Sequence[Mapping[str, Any]]) -> str:
    title = f"training history: {len(history)} epoch{'s' if len(history) != 1 else ''}"
    blocks = [row.get("trainable_blocks") for row in history]
    if None in blocks:
        return title
    if blocks[0] == blocks[-1]:
        return f"{title}, {blocks[0]} trainable backbone blocks"
    return f"{title}, trainable backbone blocks {blocks[0]} \u2192 {blocks[-1]}"


# ----------------------------------------------------------------------------------------- predictions


def _take(loader: Iterable[Any], limit: int) -> tuple[Tensor, list[Any] | None]:
    """Up to ``limit`` inputs, and their targets one per image (a class, a mask, a dict of boxes) when
    every batch carries them, from the first batches of ``loader``."""
    inputs, targets, with_targets = [], [], True
    seen = 0
    for batch in loader:
        if isinstance(batch, (tuple, list)):
            x, y = batch[0], batch[1] if len(batch) > 1 else None
        else:
            x, y = batch, None
        inputs.append(x[: limit - seen])
        with_targets = with_targets and y is not None
        targets += list(y[: limit - seen]) if y is not None else []
        seen += len(inputs[-1])
        if seen >= limit:
            break
    if not inputs:
        raise ValueError("the loader yielded no batches; pass a loader with at least one image")
    return torch.cat(inputs), targets if with_targets else None


@torch.no_grad()
def _logits(model: nn.Module, inputs: Tensor) -> Any:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        return model(inputs.to(device))
    finally:
        model.train(was_training)


def display_images(
    inputs: Tensor | Sequence[Tensor], model: nn.Module | None = None, loader: Any = None
) -> list[np.ndarray]:
    """Model inputs ``[N, C, H, W]`` (or a list of ``[C, H, W]``) as pictures: ``[H, W, 3]`` floats in [0, 1].

    The mean and std undone are those the loader's dataset declares (``dataset.data_config``, which the
    loaders of `transferkit.data` set: they describe these very tensors), else ``model.data_config``,
    else ImageNet's.

    Examples:
        >>> pictures = display_images(torch.zeros(2, 3, 4, 6))  # zeros are the mean: ImageNet's
        >>> len(pictures), pictures[0].shape, [round(float(v), 3) for v in pictures[0][0, 0]]
        (2, (4, 6, 3), [0.485, 0.456, 0.406])
    """
    config: Mapping[str, Any] | None = loader_data_config(loader) if loader is not None else None
    if config is None and model is not None:
        config = getattr(model, "data_config", None)
    config = config or DEFAULT_DATA_CONFIG
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    pictures = []
    for image in inputs:
        pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1)
        pixels = pixels.expand(3, -1, -1) if len(pixels) == 1 else pixels[:3]
        pictures.append(pixels.permute(1, 2, 0).numpy())
    return pictures


def _class_names(classes: Sequence[str] | None, model: nn.Module, loader: Any, num_classes: int) -> list[str]:
    """``classes``, else the model's names (``model.classes``), else the dataset's, else the indices."""
    own = getattr(model, "config", {}).get("classes")
    for names in (classes, own, dataset_classes(loader)):
        if names is not None and len(names) == num_classes:
            return [str(name) for name in names]
    return [str(i) for i in range(num_classes)]


def _grid(fig: Figure, panels: int, columns: int) -> list[Axes]:
    rows = math.ceil(panels / columns)
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.set_axis_off()
    return axes[:panels]


def _palette(num_classes: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(num_classes)])


def _overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, skip: set[int]) -> np.ndarray:
    """``image`` in grey, labelled pixels tinted with their class colour (``skip`` classes and 255 stay grey).

    The grey base keeps the image's own colours from mixing with the class colours of the legend.
    """
    grey = np.repeat((image @ _LUMA)[..., None], 3, axis=-1)
    out = grey.copy()
    for k in np.unique(mask):
        if int(k) in skip or int(k) == _IGNORE or k >= len(colours):
            continue
        where = mask == k
        out[where] = (1 - _OVERLAY_ALPHA) * grey[where] + _OVERLAY_ALPHA * colours[int(k)]
    return out


def draw_classification(
    images: np.ndarray, probs: Tensor, targets: Sequence[Any] | None, names: list[str], columns: int
) -> Figure:
    """Images titled with the predicted class and probability (``probs [N, K]``) and the true class."""
    n = len(images)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    fig = new_figure(figsize=(2.4 * columns, 2.6 * rows + 0.4))
    confidence, predicted = probs.max(1)
    right = 0
    for i, ax in enumerate(_grid(fig, n, columns)):
        ax.imshow(images[i], interpolation="nearest")
        title = f"pred: {names[predicted[i]]} {confidence[i]:.0%}"
        colour = "black"
        if targets is not None:
            truth = int(targets[i])
            ok = truth == int(predicted[i])
            right += ok
            title += f"\ntrue: {names[truth] if 0 <= truth < len(names) else truth}"
            colour = _GOOD if ok else _BAD
        ax.set_title(title, fontsize=9, color=colour)
    summary = f"{right}/{n} correct" if targets is not None else f"{n} images"
    fig.suptitle(f"predicted vs true class: {summary}")
    return fig


def draw_segmentation(
    images: np.ndarray, predicted: np.ndarray, targets: Sequence[Any] | None, names: list[str], columns: int
) -> Figure:
    """Each image with its true mask and then its predicted one (``predicted [N, H, W]``) overlaid."""
    n = len(images)
    per_image = 2 if targets is not None else 1
    columns = max(per_image, columns - columns % per_image)  # keep an image's two panels on one row
    panels = n * per_image
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = new_figure(figsize=(2.4 * columns, 2.5 * rows + 0.8))
    colours = _palette(len(names))
    clear = {i for i, name in enumerate(names) if name.lower() == "background"}
    axes = _grid(fig, panels, columns)
    for i in range(n):
        pred = predicted[i]
        pred_ax = axes[i * per_image + per_image - 1]
        title = f"#{i} predicted"
        if targets is not None:
            truth = targets[i].numpy()
            labelled = truth != _IGNORE
            acc = float((pred[labelled] == truth[labelled]).mean()) if labelled.any() else float("nan")
            title += f" ({acc:.0%} px)"
            true_ax = axes[i * per_image]
            true_ax.imshow(_overlay(images[i], truth, colours, clear), interpolation="nearest")
            true_ax.set_title(f"#{i} true", fontsize=9)
        pred_ax.imshow(_overlay(images[i], pred, colours, clear), interpolation="nearest")
        pred_ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(names) if k not in clear]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6) or 1, fontsize=8)
    fig.suptitle("segmentation: true masks vs predicted masks (overlaid)")
    return fig
