"""Loaders from a table of image paths and labels: a CSV file, a DataFrame, or a dict of columns.

The table has one row per image: a path column and a label column (names given as arguments). Paths
are relative to ``root``: by default the CSV file's folder (for a DataFrame or dict, the working
directory). Labels are class names (or numbers); the classes are the sorted distinct labels
(numerically when all are integers), or the ``classes`` given. Every file is checked to exist before
any loader is built. No pandas needed: a DataFrame is read through ``df.to_dict("list")``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from .arrays import classification_loaders
from .augment import CROP_SCALE, parse_augment
from .folders import _load_rgb
from .loaders import _decode_side, _pick_data_config
from .sampling import sample_randomness
from .split import check_val_pct, stratified_split
from .transforms import build_transforms

__all__ = ["LabelledFiles", "csv_loaders", "read_label_table"]

Table = (
    str | os.PathLike[str] | Mapping[str, Sequence[Any]] | Any
)  # a CSV path, a dict of columns, a DataFrame


def _columns(table: Table) -> tuple[dict[str, list[Any]], str]:
    """The table's columns and what to call it in messages."""
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise FileNotFoundError(f"label table {path} does not exist; pass a .csv file")
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns: dict[str, list[Any]] = {name: [] for name in reader.fieldnames or []}
            for row in reader:
                for name in columns:
                    columns[name].append(row.get(name))
        return columns, str(path)
    if hasattr(table, "to_dict"):
        table = table.to_dict("list")
    if isinstance(table, Mapping):
        return {str(k): list(v) for k, v in table.items()}, "the label table"
    raise TypeError(
        f"the label table must be a .csv path, a DataFrame or a dict of columns, got {type(table).__name__}"
    )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


def read_label_table(
    table: Table, path_column: str = "path", label_column: str = "label", *, root: str | Path | None = None
) -> tuple[list[Path], list[str]]:
    """The image files and labels (as strings) a table names, each file checked to exist.

    Raises:
        ValueError: A missing column, an empty table, or a row without a path or label (named).
        FileNotFoundError: A file that does not exist (the first one named, with the count).

    Examples:
        >>> read_label_table({"file": ["a.jpg"], "y": ["cat"]}, "file", "y")  # doctest: +SKIP
        ([PosixPath('a.jpg')], ['cat'])
    """
    columns, name = _columns(table)
    for column, argument in ((path_column, "path_column"), (label_column, "label_column")):
        if column not in columns:
            raise ValueError(
                f"{name} has no column {column!r} (its columns: {list(columns)}); pass {argument}="
            )
    paths, labels = columns[path_column], columns[label_column]
    if len(paths) != len(labels):
        raise ValueError(f"{name}: columns {path_column!r} and {label_column!r} differ in length")
    if not paths:
        raise ValueError(f"{name} has no rows")
    if root is None:
        root = Path(table).parent if isinstance(table, (str, os.PathLike)) else Path.cwd()
    files = []
    for row, (path, label) in enumerate(zip(paths, labels, strict=True)):
        if _blank(path) or _blank(label):
            empty = path_column if _blank(path) else label_column
            raise ValueError(f"{name}: row {row + 1} has no {empty!r}; give every row a path and a label")
        files.append(Path(root) / str(path).strip())
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} names {len(missing)} file(s) that do not exist, e.g. {missing[0]}; paths are relative "
            f"to {root} (pass root= to change that)"
        )
    return files, [_label_text(label) for label in labels]


def _label_text(label: Any) -> str:
    if isinstance(label, float) and label.is_integer():
        return str(int(label))  # a DataFrame column of ints with a gap reads as floats
    return str(label).strip()


def _classes(labels: Sequence[str]) -> list[str]:
    distinct = set(labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


class LabelledFiles(Dataset):
    """Image files with class indices, as ``(transform(image), index)``; what `csv_loaders` reads.

    Args:
        files: Image paths.
        targets: The class index of each file.
        classes: Class names by index.
        transform: ``PIL image -> tensor``; None gives the RGB PIL image.
        decode_side: Smallest side JPEGs keep when decoded at a reduced scale; None: full size.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (8, 8), "red").save(f"{tmp.name}/a.png")
        >>> data = LabelledFiles([f"{tmp.name}/a.png"], [1], ["cat", "dog"])
        >>> image, index = data[0]
        >>> image.size, data.classes[index]
        ((8, 8), 'dog')
    """

    def __init__(
        self,
        files: Sequence[Path],
        targets: Sequence[int],
        classes: Sequence[str],
        transform: Any = None,
        decode_side: int | None = None,
    ) -> None:
        self.samples = list(zip(files, targets, strict=True))
        self.targets = list(targets)
        self.classes = list(classes)
        self.transform = transform
        self.decode_side = decode_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = _load_rgb(path, self.decode_side)
        with sample_randomness(index):  # an EpochSampler's index seeds the augmentation
            return (image if self.transform is None else self.transform(image)), target


def csv_loaders(
    table: Table,
    model: nn.Module | None = None,
    *,
    path_column: str = "path",
    label_column: str = "label",
    root: str | Path | None = None,
    val: Table | None = None,
    val_pct: float | None = None,
    classes: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    image_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    augment: bool | str = True,
    flip: bool = False,
    crop_scale: tuple[float, float] = CROP_SCALE,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    fast_decode: bool = True,
) -> dict[str, DataLoader]:
    """Loaders for images listed in a table with their labels, preprocessed as `image_folder_loaders` does.

    ``data_config``, ``batch_size``, ``image_size``, ``num_workers``, ``seed``, ``augment``, ``flip``,
    ``crop_scale``, ``mixup``, ``cutmix`` and ``fast_decode`` are as in `image_folder_loaders`.

    Args:
        table: A ``.csv`` file, a DataFrame (anything with ``to_dict("list")``) or a dict of columns.
        model: A ``TransferModel`` whose ``data_config`` sets size, mean, std and interpolation.
        path_column: The column holding image paths.
        label_column: The column holding labels (class names or numbers).
        root: The folder paths are relative to (default: the CSV file's folder; for a DataFrame or dict,
            the working directory).
        val: A second table (same columns, same ``root`` rule) for validation.
        val_pct: Instead of ``val``: hold out this fraction of each class, drawn by ``seed``.
        classes: Class names in index order (default: the sorted distinct labels, numerically when all
            are integers); a label outside them is an error.

    Returns:
        ``{"train": loader}`` plus ``"val"`` with ``val`` or ``val_pct``; each batch is
        ``(images [B, 3, H, W] float, labels [B] long)``; names in ``loader.dataset.classes``.

    Raises:
        FileNotFoundError: The CSV file or an image it names does not exist.
        ValueError: A missing column or value, a label outside ``classes``, a val label train lacks, both
            ``val`` and ``val_pct``, or a class too small to split.

    Examples:
        >>> loaders = csv_loaders("labels.csv", path_column="file", label_column="y")  # doctest: +SKIP
    """
    if val is not None and val_pct is not None:
        raise ValueError("pass either val (a second table) or val_pct, not both")
    config = _pick_data_config(model, data_config)
    names = parse_augment(augment)
    augmenting = names != ("none",)
    files, labels = read_label_table(table, path_column, label_column, root=root)
    classes = [str(c) for c in classes] if classes is not None else _classes(labels)
    targets = _indices(labels, classes, "train")
    train_transform = build_transforms(
        config, augmenting, image_size, augment=names, flip=flip, crop_scale=crop_scale
    )
    val_transform = build_transforms(config, False, image_size)
    side = _decode_side(config, image_size, augmenting, crop_scale) if fast_decode else None
    val_side = _decode_side(config, image_size, False) if fast_decode else None
    datasets: dict[str, Dataset] = {}
    if val_pct is not None:
        train_idx, val_idx = stratified_split(targets, check_val_pct(val_pct), seed, classes)
        pick = lambda idx: ([files[i] for i in idx], [targets[i] for i in idx])  # noqa: E731
        datasets["train"] = LabelledFiles(*pick(train_idx), classes, train_transform, side)
        datasets["val"] = LabelledFiles(*pick(val_idx), classes, val_transform, val_side)
    else:
        datasets["train"] = LabelledFiles(files, targets, classes, train_transform, side)
    if val is not None:
        val_files, val_labels = read_label_table(val, path_column, label_column, root=root)
        val_targets = _indices(val_labels, classes, "val")
        datasets["val"] = LabelledFiles(val_files, val_targets, classes, val_transform, val_side)
    return classification_loaders(
        datasets,
        config,
        image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        mixup=mixup,
        cutmix=cutmix,
    )


def _indices(labels: Sequence[str], classes: Sequence[str], split: str) -> list[int]:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(
            f"the {split} table has labels {unknown[:5]} outside the classes {list(classes)[:10]}; "
            + ("every class needs training images" if split == "val" else "add them to classes")
        )
    return [index[label] for label in labels]
