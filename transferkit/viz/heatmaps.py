"""Maps over images: a class-activation map (or any ``[H, W]`` map in [0, 1]) laid over each picture.

`transferkit.interpret.show_top_losses` draws its panels with `draw_heatmaps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .plots import _BAD, _grid, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["HEATMAP_ALPHA", "draw_heatmaps"]

HEATMAP_ALPHA = 0.5  # the map's opacity over its image: both stay readable


def draw_heatmaps(
    images: Sequence[np.ndarray],
    maps: np.ndarray | None,
    titles: Sequence[str],
    *,
    wrong: Sequence[bool] | None = None,
    columns: int = 4,
    title: str | None = None,
) -> Figure:
    """Each image with its map overlaid (``jet``: blue 0 to red 1), titled; a colour bar when maps are drawn.

    Args:
        images: ``[H, W, 3]`` floats in [0, 1], one per panel.
        maps: ``[N, H, W]`` in [0, 1], or None to draw the images alone.
        titles: One per image.
        wrong: Titles drawn red where True.
        columns: Panels per row.
        title: The figure's title.

    Returns:
        The matplotlib ``Figure``, one axes per image (and one for the colour bar).

    Examples:
        >>> fig = draw_heatmaps([np.zeros((8, 8, 3))], np.ones((1, 8, 8)), ["a"])
        >>> len(fig.axes)  # the panel and the colour bar
        2
    """
    n = len(images)
    if maps is not None and len(maps) != n or len(titles) != n:
        raise ValueError(f"draw_heatmaps needs one map and one title per image ({n} images)")
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig = new_figure(figsize=(2.4 * columns, 2.6 * rows + 0.4))
    shown = None
    for i, ax in enumerate(_grid(fig, n, columns)):
        ax.imshow(images[i], interpolation="nearest")
        if maps is not None:
            shown = ax.imshow(
                maps[i], cmap="jet", alpha=HEATMAP_ALPHA, vmin=0, vmax=1, interpolation="bilinear"
            )
        ax.set_title(titles[i], fontsize=8, color=_BAD if wrong is not None and wrong[i] else "black")
    if shown is not None:
        fig.colorbar(shown, ax=fig.axes, shrink=0.6, label="activation (0-1)")
    if title:
        fig.suptitle(title)
    return fig
