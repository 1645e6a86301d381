"""DataLoaders for the folder layouts of `transferkit.data.folders`, with transforms from a model.

``image_folder_loaders`` and ``segmentation_folder_loaders`` build the train and val datasets with the
transforms of the model's pretrained preprocessing (augmenting the train split as ``augment`` says) and
wrap them in DataLoaders: the train one shuffles with a seeded generator, val keeps file order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .augment import GEOMETRIC_AUGMENTATIONS, MixCollate, parse_augment
from .folders import (
    _CLASSIFICATION_LAYOUT,
    _SEGMENTATION_LAYOUT,
    ClassFolder,
    SegmentationFolder,
    _require_dir,
)
from .transforms import DEFAULT_DATA_CONFIG, build_segmentation_transforms, build_transforms

__all__ = ["image_folder_loaders", "segmentation_folder_loaders"]


def _pick_data_config(model: nn.Module | None, data_config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if model is not None and data_config is not None:
        raise ValueError("pass either model or data_config, not both (model.data_config is used).")
    if model is not None:
        if not hasattr(model, "data_config"):
            raise TypeError(
                f"{type(model).__name__} has no data_config; pass a TransferModel or data_config."
            )
        return model.data_config
    return DEFAULT_DATA_CONFIG if data_config is None else data_config


def _loader(
    dataset: Dataset, *, train: bool, batch_size: int, num_workers: int, seed: int, collate_fn: Any = None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed) if train else None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def image_folder_loaders(
    root: str | Path,
    model: nn.Module | None = None,
    *,
    data_config: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    image_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    augment: bool | str = True,
    mixup: float = 0.0,
    cutmix: float = 0.0,
) -> dict[str, DataLoader]:
    """Loaders for a classification image folder (``root/train/<class>/*``, optional ``root/val``).

    Transforms follow ``model.data_config`` (or ``data_config``; ImageNet defaults when neither is
    given): augmenting for train (unless ``augment=False``), deterministic for val. The train loader
    shuffles with a generator seeded by ``seed``; val keeps file order. Class indices come from the
    train split's sorted folder names, and val reuses them (a val split may lack a class, but may not
    add one).

    Args:
        root: Dataset root.
        model: A ``TransferModel`` whose ``data_config`` sets size, mean, std and interpolation.
        data_config: Preprocessing config to use instead of a model's.
        batch_size: Samples per batch.
        image_size: Square side overriding the config's input size.
        num_workers: DataLoader worker processes.
        seed: Seed of the train shuffling order.
        augment: What the train split gets: True (``"light"``: random crop and flip), False or
            ``"none"`` (the deterministic evaluation transforms, as ``Trainer(cache_features=True)``
            needs), or ``"randaugment"``, ``"trivialaugment"``, ``"autoaugment"``, ``"randomerasing"``
            on top of light, several joined with ``+`` (see `transferkit.data.augment`).
        mixup: MixUp alpha for the train batches (0: off); targets become probabilities ``[B, K]``.
        cutmix: CutMix alpha (0: off); with both set, each batch gets one of the two.

    Returns:
        ``{"train": loader}`` plus ``"val"`` when ``root/val`` exists; each batch is
        ``(images [B, 3, H, W] float, labels [B] long)``; names are in ``loader.dataset.classes``.

    Raises:
        FileNotFoundError: If ``root/train`` is missing.
        ValueError: If a class folder holds no images, or val has a class that train lacks.
        OSError: While iterating, for an unreadable image (the message names the file).

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_folder(tmp.name, num_classes=3, per_class={"train": 4, "val": 2})
        >>> loaders = image_folder_loaders(root, data_config=DEFAULT_DATA_CONFIG, batch_size=8)
        >>> images, labels = next(iter(loaders["train"]))
        >>> images.shape, labels.shape
        (torch.Size([8, 3, 224, 224]), torch.Size([8]))
        >>> loaders["val"].dataset.classes
        ['circle', 'square', 'triangle']
    """
    root = Path(root)
    config = _pick_data_config(model, data_config)
    train_dir = _require_dir(root / "train", _CLASSIFICATION_LAYOUT)
    names = parse_augment(augment)
    train_transform = build_transforms(config, names != ("none",), image_size, augment=names)
    datasets = {"train": ClassFolder(train_dir, train_transform)}
    if (root / "val").is_dir():
        val_transform = build_transforms(config, False, image_size)
        datasets["val"] = ClassFolder(root / "val", val_transform, classes=datasets["train"].classes)
    mix = MixCollate(len(datasets["train"].classes), mixup, cutmix) if mixup or cutmix else None
    return {
        split: _loader(
            ds,
            train=split == "train",
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            collate_fn=mix if split == "train" else None,
        )  # fmt: skip
        for split, ds in datasets.items()
    }


def _read_classes(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def segmentation_folder_loaders(
    root: str | Path,
    model: nn.Module | None = None,
    *,
    data_config: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    image_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    augment: bool | str = True,
) -> dict[str, DataLoader]:
    """Loaders for a segmentation folder (``root/{train,val}/images/*`` + ``masks/*.png``).

    The train split gets joint random crop and flip (unless ``augment=False``), val a plain resize (see
    ``build_segmentation_transforms``). Class names are read from ``root/classes.txt`` when present.

    Args:
        root: Dataset root.
        model: A ``TransferModel`` whose ``data_config`` sets size, mean, std and interpolation.
        data_config: Preprocessing config to use instead of a model's.
        batch_size: Samples per batch.
        image_size: Square side overriding the config's input size.
        num_workers: DataLoader worker processes.
        seed: Seed of the train shuffling order.
        augment: True (``"light"``: joint random crop and flip) or False / ``"none"`` (val's plain
            resize, as ``Trainer(cache_features=True)`` needs); the pixel-moving policies of
            `transferkit.data.augment` are refused, since they would not move the mask.

    Returns:
        ``{"train": loader}`` plus ``"val"`` when ``root/val`` exists; each batch is
        ``(images [B, 3, H, W] float, masks [B, H, W] long)`` with 255 marking ignored pixels.

    Raises:
        FileNotFoundError: If ``root/train``, ``images/`` or ``masks/`` is missing.
        ValueError: If an image has no mask (or a mask no image), or a folder holds no images.
        OSError: While iterating, for an unreadable image or mask (the message names the file).

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_segmentation_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_segmentation_folder(tmp.name, per_split={"train": 8, "val": 4})
        >>> loaders = segmentation_folder_loaders(root, batch_size=4, image_size=64)
        >>> images, masks = next(iter(loaders["train"]))
        >>> images.shape, masks.shape, masks.dtype
        (torch.Size([4, 3, 64, 64]), torch.Size([4, 64, 64]), torch.int64)
        >>> loaders["train"].dataset.classes
        ['background', 'circle', 'square', 'triangle']
    """
    root = Path(root)
    config = _pick_data_config(model, data_config)
    _require_dir(root / "train", _SEGMENTATION_LAYOUT)
    classes = _read_classes(root / "classes.txt")
    augmenting = parse_augment(augment, allowed=GEOMETRIC_AUGMENTATIONS) != ("none",)
    loaders = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            continue
        transform = build_segmentation_transforms(config, augmenting and split == "train", image_size)
        dataset = SegmentationFolder(root / split, transform, classes=classes)
        loaders[split] = _loader(
            dataset, train=split == "train", batch_size=batch_size, num_workers=num_workers, seed=seed
        )
    return loaders
