"""Data: transforms from a backbone's pretrained config, folder datasets, and a synthetic shapes set.

- ``transforms``: ``build_transforms`` and ``build_segmentation_transforms`` from a data config;
- ``folders``: ``ClassFolder``, ``SegmentationFolder`` and the loaders that read the folder layouts;
- ``synthetic``: ``SyntheticShapes`` and the writers that save it as such folders.

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

from .folders import ClassFolder, SegmentationFolder, image_folder_loaders, segmentation_folder_loaders
from .synthetic import SHAPES, SyntheticShapes, make_shapes_folder, make_shapes_segmentation_folder
from .transforms import (
    DEFAULT_DATA_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_segmentation_transforms,
    build_transforms,
)

__all__ = [
    "DEFAULT_DATA_CONFIG",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES",
    "ClassFolder",
    "SegmentationFolder",
    "SyntheticShapes",
    "build_segmentation_transforms",
    "build_transforms",
    "image_folder_loaders",
    "make_shapes_folder",
    "make_shapes_segmentation_folder",
    "segmentation_folder_loaders",
]
