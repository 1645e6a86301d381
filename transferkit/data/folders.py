"""Folder datasets and their loaders: classification class folders and segmentation image/mask folders.

Two layouts are read:

- classification, as in the PyTorch ants/bees tutorial: ``root/train/<class>/*.jpg`` and optionally
  ``root/val/<class>/*.jpg``;
- segmentation: ``root/{train,val}/images/<stem>.*`` with ``root/{train,val}/masks/<stem>.png`` (single
  channel index PNGs, grayscale or palette, 255 = ignore) and optionally ``root/classes.txt`` (one class
  name per line, line ``i`` naming class index ``i``).

Errors name the offending file or folder, and the expected layout when the folders are wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from .transforms import DEFAULT_DATA_CONFIG, JointTransform, build_segmentation_transforms, build_transforms

__all__ = [
    "ClassFolder",
    "SegmentationFolder",
    "image_folder_loaders",
    "segmentation_folder_loaders",
]

_CLASSIFICATION_LAYOUT = "root/train/<class>/*.jpg (and optionally root/val/<class>/*.jpg)"
_SEGMENTATION_LAYOUT = "root/train/images/<stem>.jpg + root/train/masks/<stem>.png (and optionally val/)"


# --------------------------------------------------------------------------- image files


def _load_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
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
        self, root: Path, transform: Callable[[Image.Image], Tensor], classes: Sequence[str] | None = None
    ) -> None:
        self._train_classes = None if classes is None else list(classes)
        # Emptiness is checked (with the folder named) in find_classes; a val split may lack a class.
        super().__init__(str(root), transform=transform, loader=_load_rgb, allow_empty=True)

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


def _loader(dataset: Dataset, *, train: bool, batch_size: int, num_workers: int, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
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
    augment: bool = True,
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
        augment: False gives the train split the deterministic evaluation transforms, as
            ``Trainer(cache_features=True)`` needs.

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
    datasets = {"train": ClassFolder(train_dir, build_transforms(config, augment, image_size))}
    if (root / "val").is_dir():
        val_transform = build_transforms(config, False, image_size)
        datasets["val"] = ClassFolder(root / "val", val_transform, classes=datasets["train"].classes)
    return {
        split: _loader(ds, train=split == "train", batch_size=batch_size, num_workers=num_workers, seed=seed)
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
    augment: bool = True,
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
        augment: False gives the train split val's plain resize, as ``Trainer(cache_features=True)``
            needs.

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
    loaders = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            continue
        transform = build_segmentation_transforms(config, augment and split == "train", image_size)
        dataset = SegmentationFolder(root / split, transform, classes=classes)
        loaders[split] = _loader(
            dataset, train=split == "train", batch_size=batch_size, num_workers=num_workers, seed=seed
        )
    return loaders
