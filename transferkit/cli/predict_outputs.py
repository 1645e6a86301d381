"""What ``transferkit predict`` writes besides its printed lines: a CSV table and mask PNGs.

``--csv FILE`` holds one row per ranked answer, scores at full precision: ``path, rank, class`` and the
task's score columns (`transferkit.tasks.Task.csv_columns`): ``probability`` for classification,
``pixel_share`` for segmentation, ``score, x1, y1, x2, y2`` for detection (boxes in the image's pixels).
An image without a box has one row with only its path, so every predicted file appears. ``--masks-dir DIR``
holds each segmentation mask as ``DIR/<stem>.png``: class indices at the input image's own size, 8-bit
(16-bit above 256 classes).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from ..atomic import atomic_write, write_text

__all__ = ["PredictionTable", "mask_paths", "write_mask"]


class PredictionTable:
    """The rows of ``--csv``, collected while predicting and written whole at the end.

    Examples:
        >>> table = PredictionTable(("probability",))
        >>> table.add("bee.jpg", [("bees", 0.96875), ("ants", 0.03125)])
        >>> print(table.text(), end="")
        path,rank,class,probability
        bee.jpg,1,bees,0.96875
        bee.jpg,2,ants,0.03125
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.header = ["path", "rank", "class", *columns]
        self.rows: list[list[Any]] = []

    def add(self, path: str | os.PathLike[str], rows: Sequence[Sequence[Any]]) -> None:
        """One image's ranked rows, ``(class name, score, ...)`` (`transferkit.tasks.Task.rows`)."""
        if not rows:
            self.rows.append([str(path)] + [""] * (len(self.header) - 1))
        for rank, row in enumerate(rows, start=1):
            self.rows.append([str(path), rank, *row])

    def text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)  # floats as repr: every digit the model gave
        return buffer.getvalue()

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the table to ``path`` (whole or not at all), creating its folder."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(path, self.text())


def mask_paths(files: Sequence[Path], folder: Path) -> dict[Path, Path]:
    """``folder/<stem>.png`` for each image file; two files of one stem are refused before predicting.

    Raises:
        ValueError: Two input files share a stem (``a/x.jpg`` and ``b/x.png``), so their masks would too.
    """
    seen: dict[str, Path] = {}
    for path in files:
        other = seen.setdefault(path.stem, path)
        if other != path:
            raise ValueError(
                f"{other} and {path} would both write their mask to {folder / (path.stem + '.png')}; "
                "predict them into different --masks-dir folders, or rename one"
            )
    return {path: folder / f"{path.stem}.png" for path in files}


def write_mask(mask: Tensor, path: Path, num_classes: int) -> None:
    """Write a mask of class indices ``[H, W]`` as a single-channel PNG: 8-bit up to 256 classes, else
    16-bit, so every mask of one model has the same depth.

    Examples:
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_mask(torch.tensor([[0, 1], [2, 1]]), folder / "x.png", num_classes=3)
        >>> np.asarray(Image.open(folder / "x.png")).tolist()
        [[0, 1], [2, 1]]
    """
    values = mask.cpu().numpy()
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    image = Image.fromarray(values.astype(dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
