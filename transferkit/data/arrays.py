"""Loaders from images held in memory: numpy arrays or torch tensors with integer labels.

``array_loaders`` gives what `image_folder_loaders` gives for a folder: each image goes through the
model's preprocessing (resize, crop, normalise; augmenting for train), and the datasets declare their
data config, so the Trainer records it with the model. Pixels and layouts are checked as
`transferkit.data.pixels` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..preprocessing import declare_data_config
from .augment import CROP_SCALE, MixCollate, parse_augment
from .loaders import _classes_of, _loader, _pick_data_config
from .pixels import as_numpy, image_layout, pixel_scale, to_pil
from .sampling import sample_randomness
from .split import check_val_pct, stratified_split
from .transforms import build_transforms

__all__ = ["ArrayDataset", "array_loaders", "check_labels"]


def check_labels(labels: Any, count: int, classes: Sequence[str] | None = None) -> list[str]:
    """Check ``count`` integer class indices; return the class names (``classes``, or ``"0" .. "K-1"``).

    Raises:
        TypeError: Labels that are not integers.
        ValueError: Not one label per image, a negative label, or one past ``classes``.

    Examples:
        >>> check_labels(np.array([0, 2, 1]), 3)
        ['0', '1', '2']
    """
    values = as_numpy(labels, "labels")
    if values.dtype.kind not in "ui":
        raise TypeError(f"labels must be integer class indices, got dtype {values.dtype}")
    if values.ndim != 1 or len(values) != count:
        raise ValueError(f"labels have shape {list(values.shape)}; give one class index per image: [{count}]")
    low, high = int(values.min()), int(values.max())
    if low < 0:
        raise ValueError(f"labels hold {low}; class indices start at 0")
    if classes is None:
        return [str(i) for i in range(high + 1)]
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"classes must be a list of names, got {type(classes).__name__}")
    if high >= len(classes):
        raise ValueError(
            f"labels hold {high} but classes names {len(classes)}; give one name per class index"
        )
    return [str(name) for name in classes]


class ArrayDataset(Dataset):
    """Images in a numpy array or torch tensor with integer labels, as ``(transform(image), label)``.

    Args:
        images: ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``, ``C`` in 1, 3, 4; uint8 (0..255) or
            float (0..1) pixels. Kept as given (a CPU tensor's memory is shared, not copied).
        labels: ``[N]`` class indices.
        transform: ``PIL image -> tensor`` (e.g. `build_transforms`); None gives the RGB PIL image.
        classes: Class names by index (default ``"0" .. "K-1"``).
        layout: ``"NHWC"`` or ``"NCHW"`` where the shape fits both; default: read from the shape.
        indices: Which images this dataset holds (a split); default all.

    Raises:
        ValueError / TypeError: As `transferkit.data.pixels` and `check_labels` say.

    Examples:
        >>> ds = ArrayDataset(np.zeros((4, 28, 28), np.uint8), [0, 1, 0, 1])
        >>> ds[0][0].size, ds.classes, len(ds)
        ((28, 28), ['0', '1'], 4)
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        layout: str | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.images = as_numpy(images)
        self.layout = image_layout(self.images.shape, layout)
        self.scale = pixel_scale(self.images)
        self.classes = check_labels(labels, len(self.images), classes)
        self.labels = as_numpy(labels, "labels").astype(np.int64)
        self.indices = list(range(len(self.images))) if indices is None else list(indices)
        self.targets = [int(self.labels[i]) for i in self.indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> Image.Image:
        """Item ``index`` as an RGB PIL image, before the transform."""
        return to_pil(self.images[self.indices[index]], self.layout, self.scale)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.image(index)
        with sample_randomness(index):  # an EpochSampler's index seeds the augmentation
            return (image if self.transform is None else self.transform(image)), self.targets[index]


def classification_loaders(
    datasets: dict[str, Dataset],
    config: Mapping[str, Any],
    image_size: int | None,
    *,
    batch_size: int,
    num_workers: int | None,
    seed: int,
    mixup: float,
    cutmix: float,
) -> dict[str, DataLoader]:
    """DataLoaders for the ``train`` (shuffled, seeded) and ``val`` datasets, each declaring ``config``."""
    for dataset in datasets.values():
        declare_data_config(dataset, config, image_size)
    classes = _classes_of(datasets["train"])
    mix = MixCollate(len(classes), mixup, cutmix) if mixup or cutmix else None
    return {
        split: _loader(
            dataset,
            train=split == "train",
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            collate_fn=mix if split == "train" else None,
        )
        for split, dataset in datasets.items()
    }


def array_loaders(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor | Sequence[int],
    model: nn.Module | None = None,
    *,
    val: tuple[Any, Any] | None = None,
    val_pct: float | None = None,
    classes: Sequence[str] | None = None,
    layout: str | None = None,
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
) -> dict[str, DataLoader]:
    """Loaders for images in memory with the model's preprocessing, as `image_folder_loaders` has it.

    Each image becomes an RGB PIL image (grey repeated, alpha dropped) and gets the transforms of
    ``model.data_config``: augmenting for train (unless ``augment=False``), resize and centre crop for
    val. The train loader shuffles with a generator seeded by ``seed``.

    Args:
        images: ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` with ``C`` in 1, 3, 4 (numpy or
            torch); uint8 pixels 0..255 or floats in [0, 1] (not normalised yet).
        labels: ``[N]`` integer class indices.
        model: A ``TransferModel`` whose ``data_config`` sets size, mean, std and interpolation.
        val: ``(images, labels)`` of a separate validation set.
        val_pct: Instead of ``val``: hold out this fraction of each class, drawn by ``seed``
            (`transferkit.data.split`).
        classes: Class names by index (default ``"0" .. "K-1"``); the Trainer gives them to the model.
        layout: ``"NHWC"`` or ``"NCHW"`` for a shape that fits both (``[N, 3, 32, 3]``).
        data_config: Preprocessing config to use instead of a model's.
        batch_size: Samples per batch.
        image_size: Square side overriding the config's input size.
        num_workers: DataLoader worker processes; None: `default_num_workers` per split.
        seed: Seed of the train shuffling order and of the ``val_pct`` split.
        augment: As in `image_folder_loaders`: True, False / ``"none"``, or policies joined with ``+``.
        flip: Whether the augmenting train split flips images horizontally.
        crop_scale: Area range ``(min, max)`` of the augmenting random crop, ``0 < min <= max <= 1``.
        mixup: MixUp alpha for the train batches (0: off).
        cutmix: CutMix alpha (0: off).

    Returns:
        ``{"train": loader}`` plus ``"val"`` with ``val`` or ``val_pct``; each batch is
        ``(images [B, 3, H, W] float, labels [B] long)``; names in ``loader.dataset.classes``.

    Raises:
        ValueError: A layout, pixel range or label that does not fit (the message says which), both
            ``val`` and ``val_pct``, or a class too small to split.
        TypeError: Images or labels of another type or dtype.

    Examples:
        >>> images = np.random.default_rng(0).integers(0, 256, (20, 40, 40, 3), dtype=np.uint8)
        >>> loaders = array_loaders(images, np.arange(20) % 2, val_pct=0.2, image_size=32, batch_size=8)
        >>> x, y = next(iter(loaders["train"]))
        >>> x.shape, y.dtype, len(loaders["val"].dataset)
        (torch.Size([8, 3, 32, 32]), torch.int64, 4)
    """
    if val is not None and val_pct is not None:
        raise ValueError("pass either val=(images, labels) or val_pct, not both")
    config = _pick_data_config(model, data_config)
    names = parse_augment(augment)
    train_transform = build_transforms(
        config, names != ("none",), image_size, augment=names, flip=flip, crop_scale=crop_scale
    )
    val_transform = build_transforms(config, False, image_size)
    train = ArrayDataset(images, labels, train_transform, classes=classes, layout=layout)
    datasets: dict[str, Dataset] = {"train": train}
    if val_pct is not None:
        train_idx, val_idx = stratified_split(train.targets, check_val_pct(val_pct), seed, train.classes)
        for split, transform, indices in (
            ("train", train_transform, train_idx),
            ("val", val_transform, val_idx),
        ):
            datasets[split] = ArrayDataset(
                images, labels, transform, classes=train.classes, layout=train.layout, indices=indices
            )
    elif val is not None:
        if not isinstance(val, (tuple, list)) or len(val) != 2:
            raise TypeError(f"val must be a pair (images, labels), got {type(val).__name__}")
        datasets["val"] = ArrayDataset(*val, val_transform, classes=train.classes, layout=layout)
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
