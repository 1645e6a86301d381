"""A decoded-image cache for folder datasets: decode each image once, keep it as uint8, augment per epoch.

Decoding a JPEG and resizing it costs more per sample than the random crop, flip and normalisation that
follow; with a frozen or partly frozen backbone that cost can dominate an epoch. `CachedFolder` splits a
classification pipeline from ``build_transforms`` in two:

- the deterministic stage runs once per image, when the cache is built: decoding (at the reduced JPEG
  scale the folder allows), and for evaluation pipelines the resize and centre crop; augmenting pipelines
  keep the decoded image (with ``keep_side``, shrunk to that shorter side when larger, to save memory);
- the rest (random resized crop, flip, policies, ``ToDtype``, ``Normalize``) runs on every access, so
  augmentations are still drawn afresh every epoch. For a shrunk image the random crop is drawn on the
  decoded size and scaled onto the shrunk copy, so it covers the same part of the photo with the same
  random numbers; only the resampling differs.

The uint8 results live in memory up to a byte budget and the remainder in one temporary file (deleted
with the cache). The cache is filled in the process that builds it, before any DataLoader worker starts:
workers are separate processes, and what a worker stored would be lost to the others. Forked workers
(Linux) share the parent's memory pages; each worker opens the file part itself.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .folders import ClassFolder
from .sampling import sample_randomness

__all__ = ["CachedFolder", "ImageCache", "usable_cpus"]

# Steps that give the same uint8 image every time, so their output can be cached.
_DETERMINISTIC = (v2.ToImage, v2.Resize, v2.CenterCrop)


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def _compact(image: Tensor) -> Tensor:
    """``image [C, H, W]`` in its own storage, pixels interleaved (HWC in memory) as ``ToImage`` gives."""
    return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)


class ImageCache:
    """uint8 images ``[C, H, W]`` by index: in memory up to ``budget`` bytes, then in a temporary file.

    Args:
        items: What ``decode`` takes, one per image (e.g. file paths).
        decode: ``item -> uint8 Tensor [C, H, W]``; called once per image, from ``threads`` threads
            (PIL and torch release the GIL while they decode and resize).
        budget: Bytes of pixels the in-memory part may hold; images that do not fit go to the file.
        directory: Where the temporary file goes (default: the system's temporary directory).
        threads: Decoding threads (default: the usable CPU cores).

    Raises:
        ValueError: If ``budget`` is negative.

    Examples:
        >>> cache = ImageCache([4, 6], lambda n: torch.full((3, n, n), n, dtype=torch.uint8), budget=60)
        >>> cache[0].shape, cache.memory_bytes, cache.disk_bytes  # 3*4*4 = 48 bytes fit, 3*6*6 do not
        (torch.Size([3, 4, 4]), 48, 108)
        >>> int(cache[1][0, 0, 0])
        6
    """

    def __init__(
        self,
        items: Sequence[Any],
        decode: Callable[[Any], Tensor],
        *,
        budget: int,
        directory: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if budget < 0:
            raise ValueError(f"the image cache budget is a number of bytes >= 0, got {budget}.")
        self.budget, self.directory = int(budget), directory
        self.memory_bytes = self.disk_bytes = 0
        self._memory: dict[int, Tensor] = {}
        self._disk: dict[int, tuple[int, tuple[int, int, int]]] = {}  # index -> (offset, (H, W, C))
        self._path: str | None = None
        self._map: np.memmap | None = None
        self._cleanup: weakref.finalize | None = None
        self._owner = os.getpid()
        self._fill(items, decode, threads or usable_cpus())

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)

    def __getitem__(self, index: int) -> Tensor:
        if index in self._memory:
            return self._memory[index]
        offset, shape = self._disk[index]
        if self._map is None:  # opened lazily: in each DataLoader worker by the worker itself
            if self._path is None:
                raise RuntimeError(f"image {index} is on disk but the image cache has no file; rebuild it")
            self._map = np.memmap(self._path, dtype=np.uint8, mode="r")
        pixels = np.array(self._map[offset : offset + int(np.prod(shape))]).reshape(shape)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None, "_cleanup": None}  # a spawned worker maps the file itself

    def _fill(self, items: Sequence[Any], decode: Callable[[Any], Tensor], threads: int) -> None:
        chunk = 4 * threads  # bounds how many decoded images wait for the main thread at once
        with ThreadPoolExecutor(threads) as pool, _Appender(self) as disk:
            for start in range(0, len(items), chunk):
                images = pool.map(decode, items[start : start + chunk])
                for index, image in enumerate(images, start):
                    image = _compact(image)
                    if self.memory_bytes + image.numel() <= self.budget:
                        self._memory[index] = image
                        self.memory_bytes += image.numel()
                    else:
                        channels, height, width = image.shape
                        self._disk[index] = (disk.write(image), (height, width, channels))
                        self.disk_bytes += image.numel()

    def close(self) -> None:
        """Drops the images and deletes the temporary file."""
        self._memory, self._disk, self._map = {}, {}, None
        if self._cleanup is not None:
            self._cleanup()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.memory_bytes / 2**20:.1f} MiB in memory of "
            f"{self.budget / 2**20:.1f} MiB, {self.disk_bytes / 2**20:.1f} MiB on disk)"
        )


class _Appender:
    """Writes the images that overflow the budget one after the other into the cache's file."""

    def __init__(self, cache: ImageCache) -> None:
        self.cache, self.offset = cache, 0
        self.file: io.BufferedWriter | None = None

    def __enter__(self) -> _Appender:
        return self

    def write(self, image: Tensor) -> int:
        if self.file is None:
            tmp = tempfile.mkdtemp(prefix="transferkit-images-", dir=self.cache.directory)
            self.cache._path = str(Path(tmp) / "images.bin")
            self.cache._cleanup = weakref.finalize(self.cache, _remove, tmp, self.cache._owner)
            self.file = open(self.cache._path, "wb")  # noqa: SIM115 (closed in __exit__)
        offset = self.offset
        self.file.write(image.permute(1, 2, 0).numpy().tobytes())
        self.offset += image.numel()
        return offset

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _remove(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked worker that exits must not delete the parent's file
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ dataset
class _ShrinkTo:
    """Resizes an image whose shorter side exceeds ``side`` down to it (aspect kept); smaller ones pass."""

    def __init__(self, side: int, interpolation: v2.InterpolationMode) -> None:
        self.side, self.interpolation = side, interpolation

    def __call__(self, image: Tensor) -> Tensor:
        if min(image.shape[-2:]) <= self.side:
            return image
        return TF.resize(image, [self.side], interpolation=self.interpolation, antialias=True)


class _CropAsIfFull:
    """``transform`` (a ``RandomResizedCrop``) drawn on the size before shrinking, then scaled onto the image.

    The same random numbers thus pick the same part of the photo as the uncached pipeline does.
    """

    def __init__(self, transform: v2.RandomResizedCrop) -> None:
        self.transform = transform

    def __call__(self, image: Tensor, full_size: tuple[int, int]) -> Tensor:
        height, width = image.shape[-2:]
        if (height, width) == tuple(full_size):
            return self.transform(image)
        stand_in = torch.empty((), dtype=torch.uint8).expand(image.shape[0], *full_size)  # no pixels
        box = self.transform.make_params([stand_in])
        sy, sx = height / full_size[0], width / full_size[1]
        top, left = round(box["top"] * sy), round(box["left"] * sx)
        crop_h = min(max(1, round(box["height"] * sy)), height - top)
        crop_w = min(max(1, round(box["width"] * sx)), width - left)
        t = self.transform
        return TF.resized_crop(
            image, top, left, crop_h, crop_w, t.size, t.interpolation, antialias=t.antialias
        )


def split_pipeline(
    transform: v2.Compose, keep_side: int | None
) -> tuple[list[Callable[..., Any]], _CropAsIfFull | None, v2.Compose]:
    """``(cached steps, crop or None, other per-access steps)`` of a ``build_transforms`` pipeline.

    The cached steps are the leading deterministic ones (``ToImage``, ``Resize``, ``CenterCrop``); when
    only ``ToImage`` leads (an augmenting pipeline) and ``keep_side`` is set, a shrink to that shorter side
    follows it, and a leading ``RandomResizedCrop`` of the per-access steps becomes a `_CropAsIfFull`.
    """
    steps = list(transform.transforms) if isinstance(transform, v2.Compose) else []
    if not steps or not isinstance(steps[0], v2.ToImage):
        raise ValueError(
            "cache_images=True needs a v2.Compose that starts with v2.ToImage (as build_transforms makes), "
            f"got {transform!r}; build the transforms with build_transforms."
        )
    lead = 1
    while lead < len(steps) and isinstance(steps[lead], _DETERMINISTIC):
        lead += 1
    cached: list[Callable[..., Any]] = steps[:lead]
    rest = steps[lead:]
    if lead == 1 and keep_side is not None:
        crop = rest[0] if rest and isinstance(rest[0], v2.RandomResizedCrop) else None
        cached.append(_ShrinkTo(keep_side, crop.interpolation if crop else v2.InterpolationMode.BILINEAR))
        if crop is not None:
            return cached, _CropAsIfFull(crop), v2.Compose(rest[1:])
    return cached, None, v2.Compose(rest)


class CachedFolder(Dataset):
    """A `ClassFolder` whose images are decoded once into an `ImageCache`; augmentation still runs per access.

    Items are what the folder's own ``folder[i]`` gives, bit for bit, for the same random state, unless
    ``keep_side`` shrinks an image: the random crop then covers the same part of the photo, resampled
    from the shrunk copy (a difference of resampling noise).

    Args:
        folder: The folder, with a ``build_transforms`` pipeline as its transform.
        budget: Bytes of decoded pixels kept in memory; the rest goes to a temporary file.
        directory: Where that file goes (default: the system's temporary directory).
        keep_side: Shorter side augmenting pipelines keep at most (e.g. twice the crop side), trading
            exactness for memory on large photos; None (default) keeps images as decoded.
        threads: Decoding threads (default: the usable CPU cores).

    Examples:
        >>> import tempfile
        >>> from transferkit.data import DEFAULT_DATA_CONFIG, build_transforms, make_shapes_folder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = make_shapes_folder(tmp.name, num_classes=2, per_class={"train": 2}, image_size=40)
        >>> folder = ClassFolder(root / "train", build_transforms(DEFAULT_DATA_CONFIG, True, 32))
        >>> cached = CachedFolder(folder, budget=2**20)
        >>> cached[0][0].shape, len(cached), cached.cache.memory_bytes  # 4 images of 3 x 40 x 40
        (torch.Size([3, 32, 32]), 4, 19200)
    """

    def __init__(
        self,
        folder: ClassFolder,
        *,
        budget: int,
        directory: str | os.PathLike[str] | None = None,
        keep_side: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.dataset = folder
        cached, self.crop, self.transform = split_pipeline(folder.transform, keep_side)
        self._prepare = v2.Compose(cached)
        self._full_sizes: dict[int, tuple[int, int]] = {}  # decoded sizes of the images kept shrunk
        self.cache = ImageCache(
            list(enumerate(path for path, _ in folder.samples)),
            self._decode,
            budget=budget,
            directory=directory,
            threads=threads,
        )

    def _decode(self, item: tuple[int, str]) -> Tensor:
        index, path = item
        image = self.dataset.loader(path)
        kept = self._prepare(image)
        if self.crop is not None and kept.shape[-2:] != (image.height, image.width):
            self._full_sizes[index] = (image.height, image.width)
        return kept

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        return self.dataset.class_to_idx

    @property
    def samples(self) -> list[tuple[str, int]]:
        return self.dataset.samples

    @property
    def targets(self) -> list[int]:
        return self.dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        target = self.dataset.targets[index]  # an IndexError names the index, as the folder's would
        image = self.cache[index]
        with sample_randomness(index):  # an EpochSampler's index seeds the augmentation
            if self.crop is not None:
                full_size = self._full_sizes.get(index, (image.shape[-2], image.shape[-1]))
                image = self.crop(image, full_size)
            return self.transform(image), target
