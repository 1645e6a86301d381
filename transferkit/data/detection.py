"""Detection data: COCO and Pascal VOC folders, their loaders, and the batch collate.

Two layouts are read (the split folders are ``train`` and optionally ``val``), with the standard library
only (``json``, ``xml.etree``; no pycocotools):

- COCO: ``root/<split>/images/*`` + ``root/<split>/annotations.json`` (``images``, ``annotations`` with
  ``bbox`` ``[x, y, w, h]`` in pixels, ``categories``); category ids become contiguous indices ``0..K-1``
  in category-id order, their names ``dataset.classes``; ``iscrowd`` objects are dropped; images without
  annotations are kept (no boxes).
- Pascal VOC: ``root/<split>/images/<stem>.*`` + ``root/<split>/annotations/<stem>.xml`` (``object`` with
  ``name``, ``bndbox``, ``difficult``); ``difficult`` objects are dropped; classes come from
  ``root/classes.txt`` when present, else the sorted object names of the train split. VOC's 1-based
  ``xmin``/``ymin`` become 0-based pixel edges (``x1 = xmin - 1``, ``x2 = xmax``).

Boxes are ``xyxy`` pixels. A box of zero or negative size, or reaching more than a pixel outside its
image, is an error naming the file and the annotation; boxes within that pixel are clipped to the image.

Examples:
    >>> import tempfile
    >>> from transferkit.data import make_shapes_detection_folder
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = make_shapes_detection_folder(tmp.name, per_split={"train": 4, "val": 2}, image_size=64)
    >>> loaders = detection_folder_loaders(root, batch_size=2, image_size=64)
    >>> images, targets = next(iter(loaders["train"]))
    >>> images.shape, sorted(targets[0]), loaders["train"].dataset.classes
    (torch.Size([2, 3, 64, 64]), ['boxes', 'labels'], ['circle', 'square', 'triangle'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..preprocessing import declare_data_config
from .augment import check_flip
from .check import check_dataset_files
from .detection_augment import (
    MIN_VISIBLE,
    SCALE_RANGE,
    DetectionTransform,
    build_detection_transforms,
    check_min_visible,
    check_mosaic,
    check_scale_range,
)
from .detection_formats import read_coco, read_voc
from .detection_mosaic import DetectionMosaic
from .folders import _load_rgb, _require_dir
from .kinds import check_folder_kind
from .loaders import _pick_data_config, _read_classes
from .sampling import EpochSampler, sample_randomness
from .transforms import _resolve_preprocess

__all__ = [
    "DetectionFolder",
    "DetectionMosaic",
    "build_detection_transforms",
    "collate_detection",
    "detection_folder_loaders",
    "pad_images",
]

Target = dict[str, Tensor]
_LAYOUT = (
    "root/train/images/* with root/train/annotations.json (COCO) or root/train/annotations/<stem>.xml "
    "(Pascal VOC), and optionally the same under root/val/"
)


# --------------------------------------------------------------------------------------------- batches
def pad_images(images: Sequence[Tensor]) -> Tensor:
    """Images ``[C, H, W]`` of any sizes as one batch, zero-padded at the bottom and right.

    Padding only there keeps every pixel (and so every box) at its coordinates.

    Examples:
        >>> pad_images([torch.ones(3, 4, 6), torch.ones(3, 5, 2)]).shape
        torch.Size([2, 3, 5, 6])
    """
    height = max(int(image.shape[-2]) for image in images)
    width = max(int(image.shape[-1]) for image in images)
    return torch.stack(
        [F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2])) for image in images]
    )


def collate_detection(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """The detection ``collate_fn``: ``(images [N, C, H, W] padded, list of N target dicts)``.

    Examples:
        >>> sample = (torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()})
        >>> images, targets = collate_detection([sample, sample])
        >>> images.shape, len(targets)
        (torch.Size([2, 3, 8, 8]), 2)
    """
    images, targets = zip(*batch)
    return pad_images(images), list(targets)


class DetectionFolder(Dataset):
    """Images with boxes from one split folder, COCO (``annotations.json``) or VOC (``annotations/``).

    Args:
        root: The split folder holding ``images/`` and the annotations.
        transform: Joint ``(image, target) -> (image, target)`` callable, e.g. from
            `build_detection_transforms`. Without it items are ``(PIL image, target)``.
        classes: Class names by index, e.g. the train split's (a split may lack some, not add one).
            Default: the COCO categories in id order, or the sorted VOC object names.
        mosaic: Tiles an item with three other random items of the folder (`DetectionMosaic`), before
            ``transform``; drawn, like the transform's randomness, from the sample's seed.

    Raises:
        FileNotFoundError: The folder lacks ``images/`` or any annotations, or an image file is missing.
        ValueError: Unreadable annotations, an unknown image id or class, or a box that does not fit its
            image (the message names the file and the annotation).

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_detection_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_detection_folder(tmp.name, per_split={"train": 3}, format="voc")
        >>> ds = DetectionFolder(root / "train")
        >>> image, target = ds[0]
        >>> image.size, target["boxes"].shape[1], target["labels"].dtype
        ((64, 64), 4, torch.int64)
        >>> tiled = DetectionFolder(root / "train", mosaic=DetectionMosaic((48, 48), p=1.0))
        >>> tiled[0][0].size  # four images in one
        (48, 48)
    """

    def __init__(
        self,
        root: str | Path,
        transform: DetectionTransform | None = None,
        classes: Sequence[str] | None = None,
        *,
        mosaic: DetectionMosaic | None = None,
    ) -> None:
        root = Path(root)
        _require_dir(root / "images", _LAYOUT)
        coco, voc = (root / "annotations.json").is_file(), (root / "annotations").is_dir()
        if coco == voc:
            what = "both annotations.json and annotations/" if coco else "no annotations"
            raise FileNotFoundError(f"{root} has {what}; the layout is {_LAYOUT}")
        self.samples, self.classes = (read_coco if coco else read_voc)(root, classes)
        self.root, self.format, self.transform = root, "coco" if coco else "voc", transform
        self.mosaic = mosaic
        if not self.samples:
            raise ValueError(f"{root} holds no images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        if self.transform is None and self.mosaic is None:
            return self._load(index)
        with sample_randomness(index):  # an EpochSampler's index seeds the augmentation
            shown = [index] if self.mosaic is None else self.mosaic.pick(index, len(self))
            if self.mosaic is not None and len(shown) > 1:
                image, target = self.mosaic([self._load(i) for i in shown])
            else:
                image, target = self._load(index)
            return (image, target) if self.transform is None else self.transform(image, target)

    def _load(self, index: int) -> tuple[Image.Image, Target]:
        path, boxes, labels, declared = self.samples[index]
        image = _load_rgb(path)
        if declared is not None and image.size != tuple(declared):
            raise ValueError(
                f"image {path} is {image.size[0]}x{image.size[1]} but its annotation says "
                f"{declared[0]}x{declared[1]}; the boxes would not fit it"
            )
        return image, {"boxes": boxes.clone(), "labels": labels.clone()}


# --------------------------------------------------------------------------------------------- loaders
def detection_folder_loaders(
    root: str | Path,
    model: nn.Module | None = None,
    *,
    data_config: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    image_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    augment: bool | str = True,
    flip: bool = True,
    scale_range: tuple[float, float] = SCALE_RANGE,
    min_visible: float = MIN_VISIBLE,
    mosaic: float = 0.0,
) -> dict[str, DataLoader]:
    """Loaders for a detection folder, COCO or VOC (see the module docstring for both layouts).

    Args:
        root: Dataset root with ``train/`` (and optionally ``val/``).
        model: A ``TransferModel`` whose ``data_config`` sets size, mean, std and interpolation.
        data_config: Preprocessing config to use instead of a model's.
        batch_size: Images per batch.
        image_size: Square side overriding the config's input size.
        num_workers: DataLoader worker processes.
        seed: Seed of the train split's shuffling and augmentation, per epoch and sample as in
            `image_folder_loaders`.
        augment: ``True``/``"light"`` (flip, scale jitter, crop and colour jitter: see
            `build_detection_transforms`) or ``False``/``"none"`` (val's transform).
        flip: Whether the augmenting train split flips images (and their boxes) horizontally.
        scale_range: ``(min, max)`` zoom of the training resize before the crop (`SCALE_RANGE`); ``(1, 1)``
            is a fixed resize without crop.
        min_visible: Fraction of a box's area that must stay in view of a crop or a mosaic's quadrant for
            the box to be kept (`MIN_VISIBLE`); kept boxes are clipped to what is in view.
        mosaic: Probability that a training sample is a mosaic of four (`DetectionMosaic`); 0, the
            default, never. A mosaic shrinks each image to between a quarter and three quarters of its
            side, so it suits sets of large objects and longer training.

    Returns:
        ``{"train": loader}`` plus ``"val"`` when ``root/val`` exists; batches are ``(images [B, 3, H, W],
        [{"boxes": [M, 4], "labels": [M]}, ...])`` (`collate_detection`); names in ``dataset.classes``.

    Raises:
        FileNotFoundError: ``root/train`` or its ``images/`` or annotations are missing.
        ValueError: As `DetectionFolder`, an ``augment`` other than the geometric choices, a
            ``scale_range``, ``min_visible`` or ``mosaic`` out of range, or a ``mosaic`` with
            ``augment=False``.
        TypeError: A ``flip`` that is not a bool.

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_detection_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_detection_folder(tmp.name, per_split={"train": 4, "val": 2}, image_size=64)
        >>> loaders = detection_folder_loaders(root, batch_size=2, image_size=64, num_workers=0)
        >>> images, targets = next(iter(loaders["val"]))
        >>> images.shape, sorted(targets[0])
        (torch.Size([2, 3, 64, 64]), ['boxes', 'labels'])
    """
    if augment not in (True, False, "light", "none"):
        raise ValueError(f"augment for detection is True/'light' or False/'none', got {augment!r}")
    check_flip(flip)
    check_scale_range(scale_range)
    check_min_visible(min_visible)
    if check_mosaic(mosaic) and augment in (False, "none"):
        raise ValueError(
            f"mosaic={mosaic} is an augmentation, but augment={augment!r} turns augmentation off; pass "
            "mosaic=0 or augment=True"
        )
    root, config = Path(root), _pick_data_config(model, data_config)
    _require_dir(root / "train", _LAYOUT)
    check_folder_kind(root, "detection")
    classes = _read_classes(root / "classes.txt")
    loaders = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            continue
        train = split == "train"
        augmenting = train and augment in (True, "light")
        transform = build_detection_transforms(
            config, augmenting, image_size, flip=flip, scale_range=scale_range, min_visible=min_visible
        )
        tiles = None
        if augmenting and mosaic > 0:
            pre = _resolve_preprocess(config, image_size)
            tiles = DetectionMosaic(
                pre.size, mosaic, min_visible=min_visible, interpolation=pre.interpolation
            )
        dataset = DetectionFolder(root / split, transform, classes=classes, mosaic=tiles)
        declare_data_config(dataset, config, image_size)
        classes = dataset.classes  # val uses the train split's indices
        loaders[split] = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(len(dataset), seed) if train else None,
            generator=torch.Generator().manual_seed(seed),
            num_workers=num_workers,
            collate_fn=collate_detection,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=num_workers > 0,
        )
    check_dataset_files(loader.dataset for loader in loaders.values())
    return loaders
