"""Boxes drawn over images: predicted against true boxes (the ``plots`` extra, matplotlib).

`draw_detection` is what `transferkit.viz.show_predictions` draws for a detection model, and what
``transferkit predict`` saves for a detector's images.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from .plots import _grid, _palette, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SHOW_SCORE", "draw_detection"]

SHOW_SCORE = 0.3  # detections below this score are left out of pictures (they still count in mAP)


def _box(ax: Axes, box: Sequence[float], colour: object, dashed: bool, text: str | None) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    # Pixel edges: imshow centres pixel (0, 0) on (0, 0), so its left edge is at -0.5.
    ax.add_patch(
        Rectangle(
            (x1 - 0.5, y1 - 0.5),
            x2 - x1,
            y2 - y1,
            fill=False,
            edgecolor=colour,
            linewidth=1.0 if dashed else 1.6,
            linestyle=(0, (3, 2)) if dashed else "-",
        )
    )
    if text:
        ax.text(x1 - 0.5, y1 - 1.0, text, color="white", fontsize=6, va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.8, "alpha": 0.85})  # fmt: skip


def draw_detection(
    images: Sequence[np.ndarray],
    outputs: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]] | None,
    names: list[str],
    columns: int,
    *,
    min_score: float = SHOW_SCORE,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Each image with its predicted boxes (solid, class colour, ``name score``) and true ones (dashed).

    Args:
        images: ``[H, W, 3]`` floats in [0, 1], one per image (sizes may differ).
        outputs: Per image ``{"boxes" [D, 4] xyxy pixels, "scores" [D], "labels" [D]}``.
        targets: Per image ``{"boxes", "labels"}``, or None to draw predictions only.
        names: Class names by index.
        columns: Panels per row.
        min_score: Detections scoring lower are not drawn.
        path: Where to write the PNG; None only returns the figure.

    Returns:
        The matplotlib ``Figure``.

    Examples:
        >>> import torch
        >>> out = {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
        ...        "labels": torch.tensor([1])}
        >>> fig = draw_detection([np.zeros((32, 32, 3))], [out], None, ["circle", "square"], 4)
        >>> len(fig.axes)
        1
    """
    n = len(images)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig = new_figure(figsize=(2.6 * columns, 2.7 * rows + 0.8))
    colours = _palette(len(names))
    for i, ax in enumerate(_grid(fig, n, columns)):
        ax.imshow(images[i], interpolation="nearest")
        height, width = images[i].shape[:2]
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        title = f"#{i}"
        if targets is not None:
            truth = targets[i]
            for box, label in zip(truth["boxes"].tolist(), truth["labels"].tolist()):
                _box(ax, box, colours[int(label) % len(colours)], dashed=True, text=None)
            title += f": {len(truth['boxes'])} true"
        scores = outputs[i]["scores"]
        # lowest score first, so that the best box of a place is drawn last: its label stays readable
        keep = [j for j in scores.argsort().tolist() if scores[j] >= min_score]
        boxes, kept_scores = outputs[i]["boxes"][keep].tolist(), scores[keep].tolist()
        for box, score, label in zip(boxes, kept_scores, outputs[i]["labels"][keep].tolist()):
            name = names[label] if 0 <= label < len(names) else str(label)
            _box(ax, box, colours[int(label) % len(colours)], dashed=False, text=f"{name} {score:.2f}")
        title += f"{',' if targets is not None else ':'} {len(boxes)} predicted"
        ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(names)]
    width = fig.get_figwidth() * 72  # points
    # a legend entry: its patch and gap (about 30 pt) and its name (about 0.6 em a character at 8 pt)
    entry = 30 + 4.8 * max((len(name) for name in names), default=1)
    ncols = max(1, min(len(handles), 6, int(width // entry)))
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=8)
    solid = f"predicted (solid, score >= {min_score:g})"
    title = f"detection: {solid} vs true boxes (dashed)" if targets is not None else solid
    # wrapped to the figure's width (about 0.6 em a character at 11 pt), so one or two panels keep it whole
    fig.suptitle(textwrap.fill(title, max(16, int(width // 6.6))), fontsize=11)
    save_figure(fig, path)
    return fig
