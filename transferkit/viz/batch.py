"""A batch as the model sees it: images after the loader's transforms, with their normalisation undone,
and their targets drawn over them (a class name, a mask, boxes).

`transferkit.viz.show_batch` (in ``pictures``) picks the task's drawing; the drawings live here (the
normalisation is undone by `transferkit.viz.plots.display_images`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from .detection_plots import _box
from .plots import _IGNORE, _grid, _overlay, _palette, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw_box_batch", "draw_class_batch", "draw_mask_batch"]


def _layout(n: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, n))
    return columns, math.ceil(n / columns)


def draw_class_batch(
    images: Sequence[np.ndarray], targets: Sequence[Any], names: list[str], columns: int
) -> Figure:
    """Each image titled with its class name (``targets``: class indices)."""
    columns, rows = _layout(len(images), columns)
    fig = new_figure(figsize=(2.4 * columns, 2.5 * rows + 0.4))
    for ax, image, target in zip(_grid(fig, len(images), columns), images, targets):
        ax.imshow(image, interpolation="nearest")
        label = int(target)
        ax.set_title(names[label] if 0 <= label < len(names) else str(label), fontsize=9)
    fig.suptitle(f"a batch as the model sees it: {len(images)} images with their class")
    return fig


def draw_mask_batch(
    images: Sequence[np.ndarray], masks: Sequence[Any], names: list[str], columns: int
) -> Figure:
    """Each image with its mask overlaid (a class named ``background`` and 255 = ignore stay uncoloured)."""
    columns, rows = _layout(len(images), columns)
    fig = new_figure(figsize=(2.4 * columns, 2.5 * rows + 0.8))
    colours = _palette(len(names))
    clear = {i for i, name in enumerate(names) if name.lower() == "background"}
    for i, (ax, image, mask) in enumerate(zip(_grid(fig, len(images), columns), images, masks)):
        mask = np.asarray(mask)
        ax.imshow(_overlay(image, mask, colours, clear), interpolation="nearest")
        ignored = float((mask == _IGNORE).mean())
        ax.set_title(f"#{i}" + (f" ({ignored:.0%} ignored)" if ignored else ""), fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(names) if k not in clear]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6) or 1, fontsize=8)
    fig.suptitle(f"a batch as the model sees it: {len(images)} images with their masks")
    return fig


def draw_box_batch(
    images: Sequence[np.ndarray], targets: Sequence[dict[str, Tensor]], names: list[str], columns: int
) -> Figure:
    """Each image with its true boxes, labelled with their class names."""
    columns, rows = _layout(len(images), columns)
    fig = new_figure(figsize=(2.6 * columns, 2.7 * rows + 0.8))
    colours = _palette(max(len(names), 1))
    for i, (ax, image, target) in enumerate(zip(_grid(fig, len(images), columns), images, targets)):
        ax.imshow(image, interpolation="nearest")
        height, width = image.shape[:2]
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        labels = target["labels"].tolist()
        for box, label in zip(target["boxes"].tolist(), labels):
            name = names[label] if 0 <= label < len(names) else str(label)
            _box(ax, box, colours[int(label) % len(colours)], dashed=False, text=name)
        ax.set_title(f"#{i}: {len(labels)} box{'es' if len(labels) != 1 else ''}", fontsize=9)
    fig.suptitle(f"a batch as the model sees it: {len(images)} images with their boxes")
    return fig
