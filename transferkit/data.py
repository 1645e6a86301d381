"""Data: transforms from a backbone's pretrained config, folder datasets, and a synthetic shapes set.

Two folder layouts are read:

- classification, as in the PyTorch ants/bees tutorial: ``root/train/<class>/*.jpg`` and optionally
  ``root/val/<class>/*.jpg``;
- segmentation: ``root/{train,val}/images/<stem>.*`` with ``root/{train,val}/masks/<stem>.png`` (single
  channel index PNGs, grayscale or palette, 255 = ignore) and optionally ``root/classes.txt`` (one class
  name per line, line ``i`` naming class index ``i``).

``SyntheticShapes`` draws small images of shapes on the fly; ``make_shapes_folder`` and
``make_shapes_segmentation_folder`` write them out in the two layouts above for demos and tests.

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

import math
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATA_CONFIG: Mapping[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
    "crop_pct": 0.875,
}
SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")

ImagePair = tuple[Tensor, Tensor]
JointTransform = Callable[[Image.Image, Image.Image], ImagePair]

_CLASSIFICATION_LAYOUT = "root/train/<class>/*.jpg (and optionally root/val/<class>/*.jpg)"
_SEGMENTATION_LAYOUT = "root/train/images/<stem>.jpg + root/train/masks/<stem>.png (and optionally val/)"


# --------------------------------------------------------------------------- transforms


class _Preprocess(NamedTuple):
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode
    crop_pct: float


def _resolve_preprocess(data_config: Mapping[str, Any], image_size: int | None) -> _Preprocess:
    missing = [key for key in ("input_size", "mean", "std") if key not in data_config]
    if missing:
        raise ValueError(
            f"data_config lacks {missing}; pass a backbone's model.data_config or DEFAULT_DATA_CONFIG "
            "(keys: input_size, mean, std, interpolation, crop_pct)."
        )
    if image_size is None:
        height, width = (int(v) for v in data_config["input_size"][-2:])
    elif image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    else:
        height = width = int(image_size)
    name = data_config.get("interpolation", "bilinear")
    try:
        interpolation = InterpolationMode(name)
    except ValueError:
        valid = [mode.value for mode in InterpolationMode]
        raise ValueError(f"unknown interpolation {name!r} in data_config; use one of {valid}.") from None
    crop_pct = float(data_config.get("crop_pct", 0.875))
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    return _Preprocess((height, width), mean, std, interpolation, crop_pct)


def _tensor_steps(pre: _Preprocess) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std), v2.ToPureTensor()]


def build_transforms(
    data_config: Mapping[str, Any],
    train: bool,
    image_size: int | None = None,
    *,
    crop_scale: tuple[float, float] = (0.35, 1.0),
) -> v2.Compose:
    """Classification transforms matching a backbone's pretrained preprocessing.

    Train: random resized crop to the input size, horizontal flip, normalisation. Eval: resize the
    shorter side to ``size / crop_pct``, centre crop to the input size, normalisation.

    Args:
        data_config: The backbone's ``model.data_config`` (``input_size``, ``mean``, ``std`` and
            optionally ``interpolation`` and ``crop_pct``).
        train: Whether to build the augmenting training pipeline.
        image_size: Square side that overrides ``input_size``.
        crop_scale: Area range of the random crop. Milder than ImageNet's (0.08, 1.0) because transfer
            sets are small and their objects tend to fill the frame.

    Returns:
        A ``v2.Compose`` that maps a PIL image (or uint8 tensor) to a float tensor ``[3, H, W]``.

    Examples:
        >>> t = build_transforms(DEFAULT_DATA_CONFIG, train=False, image_size=64)
        >>> t(Image.new("RGB", (100, 80))).shape
        torch.Size([3, 64, 64])
    """
    pre = _resolve_preprocess(data_config, image_size)
    if train:
        geometry = [
            v2.RandomResizedCrop(pre.size, scale=crop_scale, interpolation=pre.interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        height, width = pre.size
        # A square target resizes the shorter side (keeping the aspect ratio); otherwise both sides.
        resize = (
            math.floor(height / pre.crop_pct)
            if height == width
            else (math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct))
        )
        geometry = [
            v2.Resize(resize, interpolation=pre.interpolation, antialias=True),
            v2.CenterCrop(pre.size),
        ]
    return v2.Compose([v2.ToImage(), *geometry, *_tensor_steps(pre)])


class _PairTransform:
    """Applies one v2 pipeline to an image and its mask together (same crop and flip)."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image, mask: Image.Image | np.ndarray | Tensor) -> ImagePair:
        mask = tv_tensors.Mask(torch.as_tensor(np.array(mask, dtype=np.uint8)))
        image, mask = self.transform(TF.to_image(image), mask)
        return image, mask.long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform})"


def build_segmentation_transforms(
    data_config: Mapping[str, Any],
    train: bool,
    image_size: int | None = None,
    *,
    crop_scale: tuple[float, float] = (0.5, 1.0),
) -> JointTransform:
    """Joint image + mask transforms for segmentation.

    Train: one random resized crop and horizontal flip applied to both (the mask with nearest
    neighbour). Eval: resize both to the input size; unlike classification there is no centre crop, so
    the whole image is scored.

    Args:
        data_config: The backbone's ``model.data_config``.
        train: Whether to build the augmenting training pipeline.
        image_size: Square side that overrides ``input_size``.
        crop_scale: Area range of the random crop.

    Returns:
        A callable ``(image, mask) -> (float [3, H, W], long [H, W])``; the mask is an index image (PIL
        ``L``/``P``, array or tensor ``[H, W]``) whose values pass through unchanged, 255 included.

    Examples:
        >>> t = build_segmentation_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=32)
        >>> image, mask = t(Image.new("RGB", (48, 40)), Image.new("L", (48, 40)))
        >>> image.shape, mask.shape, mask.dtype
        (torch.Size([3, 32, 32]), torch.Size([32, 32]), torch.int64)
    """
    pre = _resolve_preprocess(data_config, image_size)
    if train:
        geometry = [
            v2.RandomResizedCrop(pre.size, scale=crop_scale, interpolation=pre.interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [v2.Resize(pre.size, interpolation=pre.interpolation, antialias=True)]
    return _PairTransform(v2.Compose([*geometry, *_tensor_steps(pre)]))


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


# --------------------------------------------------------------------------- synthetic shapes


def _local_outline(kind: str, radius: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape centred on the origin, fitting inside a circle of ``radius``."""
    if kind == "square":
        h = radius * 0.7
        return [(h, h), (-h, h), (-h, -h), (h, -h)]
    if kind == "triangle":
        return [(radius * math.cos(a), radius * math.sin(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if kind == "star":
        radii = [radius, 0.45 * radius] * 5
        return [(r * math.cos(i * math.pi / 5), r * math.sin(i * math.pi / 5)) for i, r in enumerate(radii)]
    # cross: a plus sign with arms a third of the radius thick
    w, r = radius * 0.33, radius
    quarter = [(w, r), (w, w), (r, w)]
    # The other three arms are the first one turned by 90, 180 and 270 degrees.
    return [point for k in range(4) for point in (_turn(x, y, k) for x, y in quarter)]


def _turn(x: float, y: float, quarters: int) -> tuple[float, float]:
    for _ in range(quarters):
        x, y = y, -x
    return x, y


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, centre: tuple[float, float], radius: float, angle: float, fill: Any
) -> None:
    cx, cy = centre
    if kind in ("circle", "ring"):
        r = radius * 0.85
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=max(2, round(r * 0.35)))
        return
    cos, sin = math.cos(angle), math.sin(angle)
    points = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in _local_outline(kind, radius)]
    draw.polygon(points, fill=fill)


def _contrasting_colour(rng: random.Random, avoid: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """A random colour at least 250 apart (summed over channels) from every colour in ``avoid``."""
    while True:
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if all(sum(abs(a - b) for a, b in zip(colour, other, strict=True)) >= 250 for other in avoid):
            return colour


class SyntheticShapes(Dataset):
    """Images of simple shapes (circle, square, triangle, cross, star, ring) drawn on the fly.

    Sample ``i`` depends only on ``(seed, i)``: the background and shape colours (always well apart),
    position, size and a rotation of up to about 25 degrees vary with both, and the class is
    ``i % num_classes`` (balanced). Classes differ only in geometry, never in colour, so a model has to
    learn shape; a small CNN does within a few epochs (about 500 images at 32 px).

    Classification items are ``(image [3, H, W] float, label int)``. Segmentation items are
    ``(image [3, H, W] float, mask [H, W] long)`` where the mask is 0 for background and ``c + 1`` for
    pixels of shape kind ``c``; images hold one or two shapes (the first of kind ``i % num_classes``).
    A segmentation model therefore needs ``num_classes + 1`` outputs, which is ``len(dataset.classes)``.

    Args:
        num_samples: Dataset length.
        image_size: Square side in pixels (at least 16).
        num_classes: Number of shape kinds, 1 to ``len(SHAPES)``.
        task: ``"classification"`` or ``"segmentation"``.
        seed: Selects the whole set of images.
        transform: Replaces the default conversion: called on the PIL image (classification), or on
            ``(image, mask)`` PIL images (segmentation), e.g. ``build_transforms(cfg, train=True)`` or
            ``build_segmentation_transforms(cfg, train=True)``. ``normalize`` is then not used.
        normalize: Normalise with ImageNet mean/std (otherwise values are in [0, 1]).

    Examples:
        >>> ds = SyntheticShapes(100, image_size=32, num_classes=3, seed=0)
        >>> image, label = ds[4]
        >>> image.shape, label, ds.classes[label]
        (torch.Size([3, 32, 32]), 1, 'square')
        >>> seg = SyntheticShapes(10, image_size=32, task="segmentation")
        >>> image, mask = seg[0]
        >>> mask.shape, mask.dtype, len(seg.classes)  # mask values in [0, 4)
        (torch.Size([32, 32]), torch.int64, 4)
    """

    def __init__(
        self,
        num_samples: int,
        *,
        image_size: int = 64,
        num_classes: int = 3,
        task: str = "classification",
        seed: int = 0,
        transform: Callable[..., Any] | None = None,
        normalize: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(
                f"num_classes must be in [1, {len(SHAPES)}] (shape kinds {SHAPES}), got {num_classes}."
            )
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}.")
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.task = task
        self.seed = seed
        self.transform = transform
        self.normalize = normalize
        shapes = list(SHAPES[:num_classes])
        self.classes = shapes if task == "classification" else ["background", *shapes]

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[Image.Image, Image.Image, int]:
        """Draws sample ``index`` as PIL images ``(RGB image, L mask)`` and the class of its first shape."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} samples.")
        # A string seed is hashed with SHA-512, so it is stable across runs and processes.
        rng = random.Random(f"transferkit.SyntheticShapes:{self.seed}:{index}")
        size = self.image_size
        background = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (size, size), background)
        mask = Image.new("L", (size, size), 0)
        label = index % self.num_classes
        if self.task == "classification":
            kinds, radius_range = [label], (0.28, 0.45)
        else:
            extra = [rng.randrange(self.num_classes) for _ in range(rng.randrange(2))]
            kinds, radius_range = [label, *extra], (0.15, 0.3)
        colours = [background]
        for kind in kinds:
            colour = _contrasting_colour(rng, colours)
            colours.append(colour)
            radius = rng.uniform(*radius_range) * size
            centre = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
            # Modest rotations (about 25 degrees) keep small sets learnable: a square stays a square.
            angle = rng.uniform(-0.45, 0.45)
            _draw_shape(ImageDraw.Draw(image), SHAPES[kind], centre, radius, angle, colour)
            _draw_shape(ImageDraw.Draw(mask), SHAPES[kind], centre, radius, angle, kind + 1)
        return image, mask, label

    def _to_tensor(self, image: Image.Image) -> Tensor:
        tensor = TF.pil_to_tensor(image).float().div_(255)
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD) if self.normalize else tensor

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask, label = self.render(index)
        if self.task == "classification":
            return (self.transform(image) if self.transform else self._to_tensor(image)), label
        if self.transform:
            return self.transform(image, mask)
        return self._to_tensor(image), torch.from_numpy(np.array(mask, dtype=np.int64))


# --------------------------------------------------------------------------- writers


_MASK_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200, 245, 130, 48, 145, 30, 180, 240, 50, 230]


def _prepare_split_dir(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; write the synthetic set to a new folder.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_shapes_folder(
    root: str | Path,
    *,
    num_classes: int = 3,
    per_class: Mapping[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
    format: str = "jpg",
) -> Path:
    """Writes a ``SyntheticShapes`` classification set as ``root/<split>/<shape>/<index>.<format>``.

    Splits draw disjoint samples, so val never repeats a train image.

    Args:
        root: Output folder (created); its split folders must not hold files yet.
        num_classes: Number of shape kinds (class folders ``circle``, ``square``, ...).
        per_class: Images per class for each split; default ``{"train": 20, "val": 10}``.
        image_size: Square side in pixels.
        seed: Selects the images.
        format: ``"jpg"`` or ``"png"``.

    Returns:
        ``root`` as a ``Path``, ready for ``image_folder_loaders``.

    Examples:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_folder(tmp.name, num_classes=2, per_class={"train": 5, "val": 2})
        >>> sorted(p.name for p in (root / "train").iterdir())
        ['circle', 'square']
        >>> len(list((root / "val" / "square").iterdir()))
        2
    """
    if format not in ("jpg", "png"):
        raise ValueError(f"format must be 'jpg' or 'png', got {format!r}.")
    per_class = {"train": 20, "val": 10} if per_class is None else dict(per_class)
    root = Path(root)
    shapes = SyntheticShapes(
        sum(per_class.values()) * num_classes, image_size=image_size, num_classes=num_classes, seed=seed
    )
    save_options = {"quality": 95} if format == "jpg" else {}
    start = 0
    for split, count in per_class.items():
        split_dir = _prepare_split_dir(root / split)
        for name in shapes.classes:
            (split_dir / name).mkdir()
        # Each split takes a run of count * num_classes indices: count images of every class.
        for index in range(start, start + count * num_classes):
            image, _, label = shapes.render(index)
            image.save(split_dir / shapes.classes[label] / f"{index:05d}.{format}", **save_options)
        start += count * num_classes
    return root


def make_shapes_segmentation_folder(
    root: str | Path,
    *,
    num_classes: int = 3,
    per_split: Mapping[str, int] | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Writes a ``SyntheticShapes`` segmentation set as ``root/<split>/{images,masks}/<index>.png``.

    Masks are palette PNGs holding class indices (0 background, ``c + 1`` for shape kind ``c``), and
    ``root/classes.txt`` lists the ``num_classes + 1`` class names.

    Args:
        root: Output folder (created); its split folders must not hold files yet.
        num_classes: Number of shape kinds.
        per_split: Images per split; default ``{"train": 32, "val": 16}``.
        image_size: Square side in pixels.
        seed: Selects the images.

    Returns:
        ``root`` as a ``Path``, ready for ``segmentation_folder_loaders``.

    Examples:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_segmentation_folder(tmp.name, per_split={"train": 8, "val": 4})
        >>> (root / "classes.txt").read_text().split()
        ['background', 'circle', 'square', 'triangle']
        >>> len(list((root / "val" / "masks").iterdir()))
        4
    """
    per_split = {"train": 32, "val": 16} if per_split is None else dict(per_split)
    root = Path(root)
    shapes = SyntheticShapes(
        sum(per_split.values()),
        image_size=image_size,
        num_classes=num_classes,
        task="segmentation",
        seed=seed,
    )
    start = 0
    for split, count in per_split.items():
        split_dir = _prepare_split_dir(root / split)
        (split_dir / "images").mkdir()
        (split_dir / "masks").mkdir()
        for index in range(start, start + count):
            image, mask, _ = shapes.render(index)
            image.save(split_dir / "images" / f"{index:05d}.png")
            mask.putpalette(_MASK_PALETTE)  # turns the L mask into a viewable P mask, same indices
            mask.save(split_dir / "masks" / f"{index:05d}.png")
        start += count
    (root / "classes.txt").write_text("\n".join(shapes.classes) + "\n")
    return root
