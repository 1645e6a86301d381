"""Folder datasets: classification class folders and segmentation image/mask folders.

Two layouts are read:

- classification, as in the PyTorch ants/bees tutorial: ``root/train/<class>/*.jpg`` and optionally
  ``root/val/<class>/*.jpg``;
- segmentation: ``root/{train,val}/images/<stem>.*`` with ``root/{train,val}/masks/<stem>.png`` (single
  channel index PNGs, grayscale or palette, 255 = ignore) and optionally ``root/classes.txt`` (one class
  name per line, line ``i`` naming class index ``i``).

Errors name the offending file or folder, and the expected layout when the folders are wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .transforms import JointTransform

__all__ = [
    "ClassFolder",
    "SegmentationFolder",
]

_CLASSIFICATION_LAYOUT = "root/train/<class>/*.jpg (and optionally root/val/<class>/*.jpg)"
_SEGMENTATION_LAYOUT = "root/train/images/<stem>.jpg + root/train/masks/<stem>.png (and optionally val/)"


# --------------------------------------------------------------------------- image files


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit (and 32-bit int) single-channel images


def _load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, turned upright as its EXIF orientation says (as viewers show it).

    16-bit images are scaled to 8 bits (PIL's own conversion would clip everything above 255 to white).
    PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) stays in force. With ``min_side``, a
    JPEG decodes at the smallest of 1/8, 1/4 or 1/2 scale (PIL's ``draft``, the DCT's own downscaling)
    whose sides both stay >= ``min_side``, or at full size; other formats always decode at full size.
    """
    try:
        with Image.open(path) as image:
            if min_side:
                image.draft(None, (min_side, min_side))
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode in _WIDE_MODES:
                pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
                return Image.fromarray(pixels.astype(np.uint8)).convert("RGB")
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise OSError(
            f"cannot read image file {path}: {err} PIL refuses images this large "
            "(PIL.Image.MAX_IMAGE_PIXELS); downscale the file, or raise that limit if you trust it."
        ) from err
    # PIL reports broken files as OSError, SyntaxError (PNG chunks) or ValueError depending on the codec.
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read image file {path}: {err}. Replace or delete the file.") from err


def _load_mask(path: Path) -> Image.Image:
    try:
        with Image.open(path) as mask:
            mask.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read mask file {path}: {err}. Replace or delete the file.") from err
    if mask.mode not in ("L", "P"):
        raise ValueError(
            f"mask {path} has mode {mask.mode}; masks must be single-channel index PNGs (mode L or P) "
            "whose pixel values are class indices (255 = ignore)."
        )
    return mask


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMG_EXTENSIONS


def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"expected the folder {path}; the layout is {layout}.")
    return path


def _class_dirs(split_dir: Path) -> list[str]:
    """Sorted class folder names of a split; hidden folders (``.ipynb_checkpoints``) are skipped."""
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{split_dir} has no class folders; the layout is {_CLASSIFICATION_LAYOUT}.")
    for name in names:
        if not any(_is_image_file(p) for p in (split_dir / name).rglob("*")):
            raise ValueError(
                f"class folder {split_dir / name} holds no images ({', '.join(IMG_EXTENSIONS)}); add "
                "images or remove the folder."
            )
    return names


class ClassFolder(ImageFolder):
    """An ``ImageFolder`` (``root/<class>/*``) that names unreadable files and can take fixed classes.

    Args:
        root: The split folder holding one sub-folder per class.
        transform: ``PIL image -> tensor`` callable, e.g. from ``build_transforms``.
        classes: Class names by index, e.g. the training split's: the folder may lack some of them but
            may not add one. Default: its own sorted sub-folder names.
        decode_side: Smallest side JPEGs must keep when decoded at a reduced scale (see ``_load_rgb``);
            None decodes every image at full size.

    Raises:
        ValueError: If a sub-folder is not in ``classes``, or a class folder holds no images.

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_folder(tmp.name, num_classes=2, per_class={"train": 2, "val": 1})
        >>> ds = ClassFolder(root / "val", build_transforms(DEFAULT_DATA_CONFIG, False, 32))
        >>> ds.classes, len(ds), ds[0][0].shape
        (['circle', 'square'], 2, torch.Size([3, 32, 32]))
    """

    def __init__(
        self,
        root: Path,
        transform: Callable[[Image.Image], Tensor],
        classes: Sequence[str] | None = None,
        decode_side: int | None = None,
    ) -> None:
        self._train_classes = None if classes is None else list(classes)
        self.decode_side = decode_side
        loader = _load_rgb if decode_side is None else functools.partial(_load_rgb, min_side=decode_side)
        # Emptiness is checked (with the folder named) in find_classes; a val split may lack a class.
        super().__init__(str(root), transform=transform, loader=loader, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        found = _class_dirs(Path(directory))
        classes = found if self._train_classes is None else self._train_classes
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(
                f"{directory} has class folders {unknown} that the train split lacks (train classes: "
                f"{classes}); every class needs training images."
            )
        return classes, {name: index for index, name in enumerate(classes)}


class SegmentationFolder(Dataset):
    """Image/mask pairs from ``split/images/<stem>.*`` and ``split/masks/<stem>.png``.

    Args:
        root: The split folder holding ``images/`` and ``masks/``.
        transform: Joint ``(image, mask) -> (image, mask)`` callable, e.g. from
            ``build_segmentation_transforms``. Without it items are PIL images (RGB, and the index mask).
        classes: Class names by index, exposed as ``classes`` (None when unknown).

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_segmentation_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_segmentation_folder(tmp.name, per_split={"train": 2}, image_size=48)
        >>> ds = SegmentationFolder(root / "train", build_segmentation_transforms(DEFAULT_DATA_CONFIG, False))
        >>> image, mask = ds[0]
        >>> image.shape, mask.shape, mask.dtype
        (torch.Size([3, 224, 224]), torch.Size([224, 224]), torch.int64)
    """

    def __init__(
        self,
        root: str | Path,
        transform: JointTransform | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        root = Path(root)
        images_dir = _require_dir(root / "images", _SEGMENTATION_LAYOUT)
        masks_dir = _require_dir(root / "masks", _SEGMENTATION_LAYOUT)
        images = _files_by_stem(images_dir)
        if not images:
            raise ValueError(f"{images_dir} holds no images ({', '.join(IMG_EXTENSIONS)}).")
        masks = _files_by_stem(masks_dir)
        unmatched = sorted(set(images) - set(masks))
        if unmatched:
            raise ValueError(
                f"no mask for image {images[unmatched[0]]} ({len(unmatched)} unmatched); each image needs "
                f"{masks_dir}/<same stem>.png."
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise ValueError(
                f"mask {masks[orphans[0]]} has no image ({len(orphans)} unmatched) in {images_dir}; image "
                "and mask must share the file stem."
            )
        self.root = root
        self.samples = [(images[stem], masks[stem]) for stem in sorted(images)]
        self.transform = transform
        self.classes = None if classes is None else list(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, mask_path = self.samples[index]
        image, mask = _load_rgb(image_path), _load_mask(mask_path)
        if image.size != mask.size:
            raise ValueError(
                f"image {image_path} is {image.size[0]}x{image.size[1]} but its mask {mask_path} is "
                f"{mask.size[0]}x{mask.size[1]}; they must match pixel for pixel."
            )
        if self.transform is None:
            return image, mask
        return self.transform(image, mask)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if _is_image_file(p)):
        if path.stem in files:
            raise ValueError(f"{files[path.stem]} and {path} share a stem; keep one file per stem.")
        files[path.stem] = path
    return files


# --------------------------------------------------------------------------- loaders
