"""Data: transforms from a backbone's pretrained config, folder datasets, and a synthetic shapes set.

- ``transforms``: ``build_transforms`` and ``build_segmentation_transforms`` from a data config;
- ``folders``: ``ClassFolder``, ``SegmentationFolder`` and the loaders that read the folder layouts;
- ``arrays`` and ``csv_labels``: ``array_loaders`` (numpy arrays, tensors) and ``csv_loaders`` (a table of
  paths and labels) with the same preprocessing; ``split``: the seeded, stratified ``val_pct`` split;
- ``image_cache``: ``CachedFolder`` and ``ImageCache``, images decoded once (``cache_images=True``);
- ``sampling``: ``EpochSampler`` and ``sample_randomness``: each epoch's order and each sample's
  augmentation follow from the seed, the epoch and the index, so resuming is exact with loader workers;
- ``kinds``: ``folder_kinds``, which task's layout a dataset folder has (the loaders refuse another's);
- ``synthetic``: ``SyntheticShapes`` and the writers that save it as such folders;
- ``detection``: ``DetectionFolder`` (COCO or Pascal VOC), the padding collate and
  ``detection_folder_loaders``; ``detection_augment``: box-aware transforms (flip, scale jitter, crop);
  ``detection_mosaic``: ``DetectionMosaic``; ``synthetic_detection``: shapes with boxes, and their writer.

Examples:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = make_shapes_folder(tmp.name, num_classes=2, per_class={"train": 4, "val": 2}, image_size=32)
    >>> loaders = image_folder_loaders(root, batch_size=4, image_size=32)  # or (root, model)
    >>> images, labels = next(iter(loaders["train"]))
    >>> images.shape, labels.shape
    (torch.Size([4, 3, 32, 32]), torch.Size([4]))
    >>> loaders["train"].dataset.classes
    ['circle', 'square']
"""

from __future__ import annotations

from .arrays import ArrayDataset, array_loaders
from .csv_labels import LabelledFiles, csv_loaders
from .detection import (
    DetectionFolder,
    build_detection_transforms,
    collate_detection,
    detection_folder_loaders,
    pad_images,
)
from .detection_mosaic import DetectionMosaic
from .folders import ClassFolder, SegmentationFolder
from .image_cache import CachedFolder, ImageCache
from .kinds import FolderKind, folder_kinds
from .loaders import default_num_workers, image_folder_loaders, segmentation_folder_loaders
from .sampling import EpochSampler, sample_randomness
from .split import stratified_split
from .synthetic import SHAPES, SyntheticShapes, make_shapes_folder, make_shapes_segmentation_folder
from .synthetic_detection import SyntheticShapesDetection, make_shapes_detection_folder
from .transforms import (
    DEFAULT_DATA_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_segmentation_transforms,
    build_transforms,
    evaluation_geometry,
)

__all__ = [
    "DEFAULT_DATA_CONFIG",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES",
    "ArrayDataset",
    "CachedFolder",
    "ClassFolder",
    "DetectionFolder",
    "DetectionMosaic",
    "EpochSampler",
    "FolderKind",
    "ImageCache",
    "LabelledFiles",
    "SegmentationFolder",
    "SyntheticShapes",
    "SyntheticShapesDetection",
    "array_loaders",
    "build_detection_transforms",
    "build_segmentation_transforms",
    "build_transforms",
    "collate_detection",
    "csv_loaders",
    "default_num_workers",
    "detection_folder_loaders",
    "evaluation_geometry",
    "folder_kinds",
    "image_folder_loaders",
    "make_shapes_detection_folder",
    "make_shapes_folder",
    "make_shapes_segmentation_folder",
    "pad_images",
    "sample_randomness",
    "segmentation_folder_loaders",
    "stratified_split",
]
