"""A validation split drawn from one labelled set: seeded, stratified per class, deterministic.

``val_pct`` of `image_folder_loaders`, `array_loaders` and `csv_loaders` comes here. Each class gives
``round(n * val_pct)`` of its ``n`` samples to val, at least one and at most ``n - 1``, so every class is
in both splits; a class with a single sample cannot be and is an error. Which samples go is drawn by
``seed`` alone: the same labels and seed give the same split on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .folders import _CLASSIFICATION_LAYOUT, ClassFolder

__all__ = ["check_val_pct", "split_class_folder_root", "split_folder", "stratified_split"]


def check_val_pct(val_pct: Any) -> float:
    """``val_pct`` as a float in (0, 1), or a `ValueError` / `TypeError` saying what it takes."""
    if isinstance(val_pct, bool) or not isinstance(val_pct, (int, float)):
        raise TypeError(f"val_pct must be a fraction such as 0.2, got {type(val_pct).__name__} {val_pct!r}")
    if not 0 < val_pct < 1:
        raise ValueError(
            "val_pct is the fraction of each class held out for val, 0 < val_pct < 1 (0.2 for 20%); "
            f"got {val_pct!r}"
        )
    return float(val_pct)


def stratified_split(
    targets: Sequence[int] | np.ndarray, val_pct: float, seed: int = 0, classes: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Indices of a train / val split of samples labelled ``targets``, drawn per class by ``seed``.

    Args:
        targets: The class index of each sample.
        val_pct: Fraction of each class that goes to val, ``0 < val_pct < 1``.
        seed: Draws which samples go; the same targets and seed give the same split.
        classes: Class names by index, for the error message.

    Returns:
        ``(train indices, val indices)``, each sorted (val keeps the samples' order).

    Raises:
        ValueError: A class with fewer than 2 samples (it cannot be in both splits), or ``val_pct``
            outside (0, 1).

    Examples:
        >>> stratified_split([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 0.25, seed=0)
        ([0, 1, 3, 4, 5, 6, 8], [2, 7, 9])
    """
    val_pct = check_val_pct(val_pct)
    labels = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            name = classes[label] if classes is not None and label < len(classes) else str(label)
            raise ValueError(
                f"class {name!r} has {len(members)} sample; val_pct needs at least 2 per class (one for "
                "train, one for val): add samples, drop the class, or pass a separate val set"
            )
        count = min(max(1, round(len(members) * val_pct)), len(members) - 1)
        val += rng.permutation(members)[:count].tolist()
    held = set(val)
    return [i for i in range(len(labels)) if i not in held], sorted(val)


def split_class_folder_root(root: Path) -> Path:
    """The folder ``val_pct`` splits: ``root/train`` when there is one, else ``root`` (classes directly
    under it). A ``root/val`` next to it is an error: the split would ignore it."""
    if (root / "val").is_dir():
        raise ValueError(
            f"{root} has a val/ folder and val_pct was given; use the folder's val split (drop val_pct) "
            "or move val/ away"
        )
    source = root / "train" if (root / "train").is_dir() else root
    if not source.is_dir():
        raise FileNotFoundError(
            f"expected the folder {root}; with val_pct the layout is root/<class>/*.jpg or "
            f"{_CLASSIFICATION_LAYOUT}"
        )
    return source


def split_folder(
    train: ClassFolder,
    val_pct: float,
    seed: int,
    val_folder: Callable[[Sequence[str]], ClassFolder],
) -> dict[str, ClassFolder]:
    """``train`` cut in two by `stratified_split`: ``{"train": train, "val": val_folder(classes)}``, each
    keeping only its own samples (the same files, each split with its own transform)."""
    train_idx, val_idx = stratified_split(train.targets, val_pct, seed, train.classes)
    val = val_folder(train.classes)
    _keep(train, train_idx)
    _keep(val, val_idx)
    return {"train": train, "val": val}


def _keep(folder: ClassFolder, indices: Sequence[int]) -> None:
    folder.samples = [folder.samples[i] for i in indices]
    folder.imgs = folder.samples
    folder.targets = [target for _, target in folder.samples]
