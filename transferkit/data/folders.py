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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .sampling import sample_randomness
from .transforms import JointTransform

__all__ = [
    "ClassFolder",
    "SegmentationFolder",
]

_CLASSIFICATION_LAYOUT = "root/train/<class>/*.jpg (and optionally root/val/<class>/*.jpg)"
_SEGMENTATION_LAYOUT = "root/train/images/<stem>.jpg + root/train/masks/<stem>.png (and optionally val/)"


# --------------------------------------------------------------------------- image files


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_BOMB_ADVICE = "downscale the file, or raise that limit if you trust it"


class _Refused(Exception):
    """Why an image file is not decoded; `_load_rgb` turns it into an ``OSError`` naming the file."""


def _bomb_limit() -> str:
    return f"PIL's decompression bomb limit PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS:,} pixels)"


def _pixels_problem(width: int, height: int) -> str | None:
    """Why an image file of ``width x height`` is over PIL's decompression-bomb limit, or None.

    The limit is ``PIL.Image.MAX_IMAGE_PIXELS`` (None switches it off); PIL itself only warns until twice
    the limit, where this refuses from the limit on.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return None
    return f"it is {width}x{height} = {width * height:,} pixels, over {_bomb_limit()}; {_BOMB_ADVICE}."


def _resize_problem(width: int, height: int, resize_side: int | None) -> str | None:
    """Why an image of ``width x height`` would pass PIL's decompression-bomb limit once a transform scales
    its shorter side to ``resize_side`` pixels, or None: a 100000x1 strip is 100,000 pixels, but
    256 x 25,600,000 once its shorter side is 256.

    Examples:
        >>> _resize_problem(4000, 200, resize_side=256) is None
        True
        >>> "becomes 256x25,600,000" in _resize_problem(100_000, 1, resize_side=256)
        True
    """
    limit = Image.MAX_IMAGE_PIXELS
    short, long = sorted((width, height))
    if limit is None or resize_side is None or short < 1:
        return None
    scaled = long * resize_side // short  # torchvision's Resize(int) rounds the long side down alike
    if scaled * resize_side <= limit:
        return None
    return (
        f"it is {width}x{height} pixels, which becomes {resize_side}x{scaled:,} = {scaled * resize_side:,} "
        f"pixels when its shorter side is scaled to the model's {resize_side}, over {_bomb_limit()}; crop "
        "the image closer to square or cut it into tiles, or raise that limit if you have the memory."
    )


def _to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, deep single-channel pixels scaled to 8 bits (`_load_rgb` says how)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _grey8(np.asarray(image, dtype=np.int64) >> 8)
    if image.mode == "I":
        return _grey8(_sixteen_bit_levels(np.asarray(image, dtype=np.int64)) >> 8)
    if image.mode == "F":
        return _grey8(_float_levels(np.asarray(image, dtype=np.float64)))
    return image.convert("RGB")


def _sixteen_bit_levels(pixels: np.ndarray) -> np.ndarray:
    """32-bit integer pixels, refused unless they hold 16-bit values (what PIL reads 16-bit PGMs as)."""
    low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if low < 0 or high > 65535:
        raise _Refused(
            f"its 32-bit integer pixels span {low}..{high}, outside the 16-bit range 0..65535 that "
            "integer images are read in; save it as an 8- or 16-bit image."
        )
    return pixels


def _float_levels(pixels: np.ndarray) -> np.ndarray:
    """Float pixels as 8-bit levels: [0, 1] scaled by 255, else [0, 255] as they are; others refused."""
    if not np.isfinite(pixels).all():
        raise _Refused("it holds NaN or infinite float pixels; replace or delete the file.")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise _Refused(
            f"its float pixels span {low:g}..{high:g}; float images are read with values in [0, 1] "
            "(scaled by 255) or in [0, 255]; rescale it into one of these ranges."
        )
    return np.rint(pixels * 255 if high <= 1 else pixels)


def _grey8(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint8)).convert("RGB")


def _load_rgb(
    path: str | os.PathLike[str], min_side: int | None = None, *, resize_side: int | None = None
) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, turned upright as its EXIF orientation says (as viewers show it).

    Its size is checked before any pixel is decoded: an image over PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``) is refused, and so, with ``resize_side`` (the shorter side a
    transform will scale it to), is one that scaling would take over that limit. Deep single-channel
    images are scaled to 8 bits, where PIL's own conversion would clip everything above 255 to white:
    16-bit integers (modes ``I;16*``, and ``I`` with values in 0..65535) by 1/256; floats (mode ``F``)
    by 255 when all lie in [0, 1], else as they are when all lie in [0, 255]. Other values (negative,
    larger, NaN) are refused rather than clipped. With ``min_side``, a JPEG decodes at the smallest of
    1/8, 1/4 or 1/2 scale (PIL's ``draft``, the DCT's own downscaling) whose sides both stay
    >= ``min_side``, or at full size; other formats always decode at full size.

    Raises:
        OSError: The file cannot be read, is too large, or holds pixel values outside those ranges; the
            message names the file and what to do.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            problem = _pixels_problem(width, height) or _resize_problem(width, height, resize_side)
            if problem:
                raise _Refused(problem)
            if min_side:
                image.draft(None, (min_side, min_side))
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb8(image)
    except _Refused as err:
        raise OSError(f"cannot read image file {path}: {err}") from None
    # Past twice the limit PIL refuses the header itself (or warns, where warnings are errors).
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise OSError(
            f"cannot read image file {path}: {err} PIL refuses images this large "
            f"(PIL.Image.MAX_IMAGE_PIXELS); {_BOMB_ADVICE}."
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

    def __getitem__(self, index: int) -> tuple[Any, int]:
        with sample_randomness(index):  # an EpochSampler's index seeds the augmentation
            return super().__getitem__(index)

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
        with sample_randomness(index):
            return self.transform(image, mask)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if _is_image_file(p)):
        if path.stem in files:
            raise ValueError(f"{files[path.stem]} and {path} share a stem; keep one file per stem.")
        files[path.stem] = path
    return files


# --------------------------------------------------------------------------- loaders
