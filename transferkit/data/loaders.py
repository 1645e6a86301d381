"""DataLoaders for the folder layouts of `transferkit.data.folders`, with transforms from a model.

``image_folder_loaders`` and ``segmentation_folder_loaders`` build the train and val datasets with the
transforms of the model's pretrained preprocessing (augmenting the train split as ``augment`` says) and
wrap them in DataLoaders: the train one shuffles by an `EpochSampler` (each epoch's order and each
sample's augmentation seed follow from ``seed``, the epoch and the index), val keeps file order.

Worker processes default from the machine (`default_num_workers`); image folders decode JPEGs at a
reduced scale where the input size allows it, and ``cache_images=True`` decodes every image only once
(`transferkit.data.image_cache`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..preprocessing import declare_data_config
from .augment import CROP_SCALE, GEOMETRIC_AUGMENTATIONS, MixCollate, check_crop_scale, parse_augment
from .check import check_dataset_files
from .folders import (
    _CLASSIFICATION_LAYOUT,
    _SEGMENTATION_LAYOUT,
    ClassFolder,
    SegmentationFolder,
    _require_dir,
)
from .image_cache import CachedFolder, usable_cpus
from .kinds import check_folder_kind, check_two_classes
from .sampling import EpochSampler
from .split import split_class_folder_root, split_folder
from .transforms import (
    DEFAULT_DATA_CONFIG,
    _resolve_preprocess,
    build_segmentation_transforms,
    build_transforms,
)

__all__ = [
    "DEFAULT_IMAGE_CACHE_BUDGET",
    "default_num_workers",
    "image_folder_loaders",
    "segmentation_folder_loaders",
]

DEFAULT_IMAGE_CACHE_BUDGET = 1024**3  # bytes of decoded pixels kept in memory before the rest spills to disk
_MIN_SAMPLES_FOR_WORKERS = 64  # below this, starting worker processes costs more than they hide


def default_num_workers(num_samples: int) -> int:
    """DataLoader workers for a split of ``num_samples``: one per usable CPU core (at most 8), or none.

    No workers on a single core (a worker would only take turns with training), nor for splits under
    64 samples, where starting the processes costs more than the decoding they would hide.

    Examples:
        >>> default_num_workers(10)
        0
        >>> default_num_workers(1000) == (min(usable_cpus(), 8) if usable_cpus() > 1 else 0)
        True
    """
    cpus = usable_cpus()
    return min(cpus, 8) if cpus > 1 and num_samples >= _MIN_SAMPLES_FOR_WORKERS else 0


def _decode_side(
    config: Mapping[str, Any],
    image_size: int | None,
    augmenting: bool,
    crop_scale: tuple[float, float] | None = None,
) -> int:
    """Smallest side a reduced-scale JPEG decode must keep. Augmenting: the side at which the smallest
    random crop (``crop_scale[0]`` of the area, at the narrowest aspect ratio, 3:4) still spans the
    crop's output side, so no crop is upsampled: 1.4x the crop at the default (0.7, 1.0), 2x at 0.35.
    Else the side the evaluation resize produces.

    Examples:
        >>> config = DEFAULT_DATA_CONFIG
        >>> _decode_side(config, 128, True, (0.7, 1.0)), _decode_side(config, 128, True, (0.35, 1.0))
        (177, 250)
    """
    pre = _resolve_preprocess(config, image_size)
    if augmenting:
        if crop_scale is None:  # the pipeline's own crop, never a guess: a smaller one would upsample
            raise TypeError("_decode_side needs the augmenting pipeline's crop_scale")
        return math.ceil(max(pre.size) / math.sqrt(check_crop_scale(crop_scale)[0] * 3 / 4))
    return max(math.floor(side / pre.crop_pct) for side in pre.size)


def _pick_data_config(model: nn.Module | None, data_config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if model is not None and data_config is not None:
        raise ValueError("pass either model or data_config, not both (model.data_config is used).")
    if model is not None:
        config: Mapping[str, Any] | None = getattr(model, "data_config", None)
        if config is None:
            raise TypeError(
                f"{type(model).__name__} has no data_config; pass a TransferModel or data_config."
            )
        return config
    return DEFAULT_DATA_CONFIG if data_config is None else data_config


def _loader(
    dataset: Dataset,
    *,
    train: bool,
    batch_size: int,
    num_workers: int | None,
    seed: int,
    collate_fn: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset``; train: shuffled by an `EpochSampler` (order and augmentation seeds
    per epoch from ``seed``), val: in order. Its own generator draws the workers' base seed, so creating
    an iterator never draws from torch's global generator."""
    if not isinstance(dataset, Sized):
        raise TypeError(
            f"{type(dataset).__name__} has no len(): pass a map-style Dataset (__len__, __getitem__)"
        )
    if num_workers is None:
        num_workers = default_num_workers(len(dataset))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed) if train else None,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
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
    num_workers: int | None = None,
    seed: int = 0,
    augment: bool | str = True,
    flip: bool = False,
    crop_scale: tuple[float, float] = CROP_SCALE,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    fast_decode: bool = True,
    cache_images: bool = False,
    cache_budget: int = DEFAULT_IMAGE_CACHE_BUDGET,
    cache_dir: str | os.PathLike[str] | None = None,
    val_pct: float | None = None,
) -> dict[str, DataLoader]:
    """Loaders for a classification image folder (``root/train/<class>/*``, optional ``root/val``).

    Transforms follow ``model.data_config`` (or ``data_config``; ImageNet defaults when neither is
    given): augmenting for train (unless ``augment=False``), deterministic for val. The train loader
    shuffles by an `EpochSampler` seeded by ``seed``; val keeps file order. Class indices come from the
    train split's sorted folder names, and val reuses them (a val split may lack a class, but may not
    add one).

    Args:
        root: Dataset root.
        model: A ``TransferModel`` whose ``data_config`` sets size, mean, std and interpolation.
        data_config: Preprocessing config to use instead of a model's.
        batch_size: Samples per batch.
        image_size: Square side overriding the config's input size.
        num_workers: DataLoader worker processes; None picks them per split with `default_num_workers`
            (one per usable core, at most 8; none for splits under 64 images). Workers persist across
            epochs, and batches go to pinned memory when CUDA is available.
        seed: Seed of the train split's shuffling and augmentation: epoch ``e``'s order follows from
            ``(seed, e)`` and each sample's random augmentation from ``(seed, e, index)``, whatever the
            number of workers, so a resumed run repeats the original exactly (`transferkit.data.sampling`).
        augment: What the train split gets: True (``"light"``: a random crop, flipped with ``flip``), False or
            ``"none"`` (the deterministic evaluation transforms, as ``Trainer(cache_features=True)``
            needs), or ``"randaugment"``, ``"trivialaugment"``, ``"autoaugment"``, ``"randomerasing"``
            on top of light, several joined with ``+`` (see `transferkit.data.augment`).
        flip: Whether the augmenting train split flips images horizontally: True for photos whose mirror
            image is the same class; off by default, since for digits, text or left / right it is not.
        crop_scale: Area range ``(min, max)`` of the augmenting random crop, as fractions of the image:
            ``0 < min <= max <= 1`` (default `augment.CROP_SCALE`, 70 % to all of it).
        mixup: MixUp alpha for the train batches (0: off); targets become probabilities ``[B, K]``.
        cutmix: CutMix alpha (0: off); with both set, each batch gets one of the two.
        fast_decode: Decode JPEGs at 1/2, 1/4 or 1/8 scale (PIL's ``draft``) when both sides stay at
            least the side at which the smallest random crop still spans the input (train, augmenting:
            1.4x the crop size at the default ``crop_scale``, 2x at 0.35) or the evaluation resize's
            side (val and ``augment=False``); pixels then differ from a full decode by resampling noise
            only.
            False decodes every image at full size.
        cache_images: Decode (and, for deterministic pipelines, resize and crop) every image once, when
            the loaders are built, and keep the uint8 results (`transferkit.data.image_cache`); random
            augmentation still runs per sample every epoch, and items equal the uncached ones bit for bit
            for the same random state. For runs that augment or that evaluate every epoch;
            ``Trainer(cache_features=True)`` already computes a deterministic split only once.
        cache_budget: Bytes of decoded pixels the image cache keeps in memory, train and val together
            (default 1 GiB; a 500 x 375 photo takes 0.56 MB); the rest goes to a temporary file.
            ``loader.dataset.cache.memory_bytes`` and ``.disk_bytes`` tell what it took.
        cache_dir: Where that file goes (default: the system's temporary directory).
        val_pct: Hold out this fraction of each class as val, drawn by ``seed`` (`transferkit.data.split`):
            from ``root/train``, or from ``root`` itself when the classes lie directly under it.

    Returns:
        ``{"train": loader}`` plus ``"val"`` when ``root/val`` exists (or ``val_pct`` is given); each batch is
        ``(images [B, 3, H, W] float, labels [B] long)``; names are in ``loader.dataset.classes``.

    Raises:
        FileNotFoundError: If ``root/train`` is missing.
        ValueError: If ``root`` is a segmentation or detection folder (`transferkit.data.kinds`), train
            holds one class folder, a class folder holds no images, val has a class that train lacks,
            ``cache_budget`` is negative, ``crop_scale`` is outside ``0 < min <= max <= 1``, or
            ``val_pct`` is given with a ``root/val`` folder or for a class of fewer than 2 images.
        TypeError: If ``flip`` is not a bool.
        OSError: For an unreadable image (the message names the file): while iterating, or while the
            loaders are built with ``cache_images=True``.

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
    check_folder_kind(root, "classification")
    if val_pct is not None:
        train_dir = split_class_folder_root(root)
    else:
        train_dir = _require_dir(root / "train", _CLASSIFICATION_LAYOUT)
    names = parse_augment(augment)
    augmenting = names != ("none",)
    train_transform = build_transforms(
        config, augmenting, image_size, augment=names, flip=flip, crop_scale=crop_scale
    )
    side = _decode_side(config, image_size, augmenting, crop_scale) if fast_decode else None
    train = ClassFolder(train_dir, train_transform, decode_side=side)
    check_two_classes(train_dir, train.classes)
    folders = {"train": train}
    if (root / "val").is_dir():
        val_transform = build_transforms(config, False, image_size)
        side = _decode_side(config, image_size, False) if fast_decode else None
        folders["val"] = ClassFolder(root / "val", val_transform, classes=train.classes, decode_side=side)
    if val_pct is not None:
        val_side = _decode_side(config, image_size, False) if fast_decode else None
        val_transform = build_transforms(config, False, image_size)
        folders = split_folder(
            train,
            val_pct,
            seed,
            lambda classes: ClassFolder(train_dir, val_transform, classes=classes, decode_side=val_side),
        )
    check_dataset_files(folders.values())  # every unreadable file named now, not mid-epoch
    datasets: dict[str, ClassFolder | CachedFolder] = {**folders}
    if cache_images:
        if cache_budget < 0:
            raise ValueError(f"cache_budget is a number of bytes >= 0, got {cache_budget}.")
        for split, folder in folders.items():  # train first: it is read most often
            datasets[split] = cached = CachedFolder(folder, budget=cache_budget, directory=cache_dir)
            cache_budget -= cached.cache.memory_bytes
    for dataset in datasets.values():
        declare_data_config(dataset, config, image_size)
    classes = datasets["train"].classes
    mix = MixCollate(len(classes), mixup, cutmix) if mixup or cutmix else None
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
    num_workers: int | None = None,
    seed: int = 0,
    augment: bool | str = True,
    flip: bool = True,
    crop_scale: tuple[float, float] = (0.5, 1.0),
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
        num_workers: DataLoader worker processes; None: `default_num_workers` per split.
        seed: Seed of the train split's shuffling and augmentation: epoch ``e``'s order follows from
            ``(seed, e)`` and each sample's random augmentation from ``(seed, e, index)``, whatever the
            number of workers, so a resumed run repeats the original exactly (`transferkit.data.sampling`).
        augment: True (``"light"``: joint random crop and flip) or False / ``"none"`` (val's plain
            resize, as ``Trainer(cache_features=True)`` needs); the pixel-moving policies of
            `transferkit.data.augment` are refused, since they would not move the mask.
        flip: Whether the augmenting train split flips image and mask horizontally.
        crop_scale: Area range ``(min, max)`` of the joint random crop, ``0 < min <= max <= 1``.

    Returns:
        ``{"train": loader}`` plus ``"val"`` when ``root/val`` exists; each batch is
        ``(images [B, 3, H, W] float, masks [B, H, W] long)`` with 255 marking ignored pixels.

    Raises:
        FileNotFoundError: If ``root/train``, ``images/`` or ``masks/`` is missing.
        ValueError: If ``root`` is a class or detection folder, an image has no mask (or a mask no image),
            a folder holds no images, or ``crop_scale`` is outside ``0 < min <= max <= 1``.
        TypeError: If ``flip`` is not a bool.
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
    check_folder_kind(root, "segmentation")
    classes = _read_classes(root / "classes.txt")
    augmenting = parse_augment(augment, allowed=GEOMETRIC_AUGMENTATIONS) != ("none",)
    loaders = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            continue
        train = augmenting and split == "train"
        transform = build_segmentation_transforms(config, train, image_size, flip=flip, crop_scale=crop_scale)
        dataset = SegmentationFolder(root / split, transform, classes=classes)
        declare_data_config(dataset, config, image_size)
        loaders[split] = _loader(
            dataset, train=split == "train", batch_size=batch_size, num_workers=num_workers, seed=seed
        )
    check_dataset_files(loader.dataset for loader in loaders.values())
    return loaders


def _classes_of(dataset: Dataset) -> list[str]:
    """A classification dataset's class names by index (its ``classes``)."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise TypeError(f"{type(dataset).__name__} has no classes: give it the class names by index")
    return list(classes)
