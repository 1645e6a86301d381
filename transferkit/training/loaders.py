"""What ``fit`` accepts as loaders and batches, checked up front, and what a pass iterates (`Feed`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["Feed", "check_length", "refuse_dataset", "split_batch", "split_loaders"]


@dataclass(frozen=True)
class Feed:
    """What one pass iterates and what it calls: batches, and the module that takes their inputs.

    A user's loader is a feed of raw batches for the model itself; the feature cache
    (`transferkit.training.cache.PrefixCaches.epoch`) hands a feed of batches it made, checked when it
    filled, with its trainable part as the module. A pass calls ``feed.module or model`` on each batch's
    inputs and never asks what the inputs are.

    Attributes:
        batches: Yields ``(inputs, targets)`` pairs; has a ``len()``.
        module: The module to call on the inputs; None: the model (or its training wrapper).
        checked: The batches are ``(inputs, targets)`` pairs already checked (see `split`).

    Examples:
        >>> feed = Feed(DataLoader(dataset, batch_size=4))  # 8 samples
        >>> len(feed), feed.module is None
        (2, True)
    """

    batches: Any
    module: nn.Module | None = None
    checked: bool = False

    def __len__(self) -> int:
        return len(self.batches)

    def split(self, batch: Any, task: Any, where: str) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch: `split_batch` for a raw batch, a checked one as it is."""
        return batch if self.checked else split_batch(batch, task, where)

    def check(self, task: Any, inputs: Any, targets: Any, num_classes: int, where: str) -> None:
        """``task.check_batch`` for a raw batch (a checked batch's targets were checked when it was made)."""
        if not self.checked:
            task.check_batch(inputs, targets, num_classes, where)


def split_loaders(loaders: Any) -> tuple[Any, Any]:
    """``(train, val)`` from ``{"train": ..., "val": ...}``, a ``(train, val)`` tuple or a train loader."""
    if isinstance(loaders, dict):
        if "train" not in loaders or set(loaders) - {"train", "val"}:
            raise ValueError(
                f"fit() takes {{'train': ..., 'val': ...}} ('val' optional), got keys {sorted(loaders)}"
            )
        return loaders["train"], loaders.get("val")
    if isinstance(loaders, tuple):
        if len(loaders) != 2:
            raise ValueError(f"fit() takes a (train, val) tuple, got {len(loaders)} items")
        return loaders
    return loaders, None


def refuse_dataset(loader: Any, name: str) -> None:
    """Raise for a map-style Dataset given where a loader belongs: it yields single samples, not batches."""
    if isinstance(loader, Dataset) and not isinstance(loader, (DataLoader, IterableDataset)):
        raise TypeError(
            f"the {name} loader is a {type(loader).__name__}, a Dataset, which yields single samples; "
            "wrap it in a DataLoader: DataLoader(dataset, batch_size=32, shuffle=True) (shuffle for training)"
        )


def check_length(loader: Any, name: str) -> None:
    """Raise unless ``loader`` is a loader (not a Dataset) with a length of at least one batch."""
    refuse_dataset(loader, name)
    try:
        n = len(loader)
    except TypeError:
        raise TypeError(f"the {name} loader has no len(); give its dataset a __len__") from None
    if n == 0:
        raise ValueError(
            f"the {name} loader is empty (0 batches); check the dataset, or lower batch_size "
            "if drop_last=True"
        )


def split_batch(batch: Any, task: Any, where: str) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch, with the inputs checked by ``task`` (`Task.check_inputs`).

    Raises:
        TypeError: The batch is a dict, or not an ``(inputs, targets)`` pair, or the inputs are not float.
        ValueError: The inputs are not a batch ``[N, C, H, W]``.
    """
    if isinstance(batch, Mapping):
        raise TypeError(
            f"the batch at {where} is a dict with keys {sorted(map(str, batch))}; the Trainer takes "
            "(inputs, targets) pairs: make the dataset return (image, target) tuples, or give the "
            "DataLoader a collate_fn that returns (images, targets)"
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"a {len(batch)}-item {type(batch).__name__}" if isinstance(batch, (tuple, list)) else None
        raise TypeError(
            f"the batch at {where} is {what or 'a ' + type(batch).__name__}; the Trainer takes "
            "(inputs, targets) pairs, e.g. DataLoader(TensorDataset(images, labels), batch_size=32)"
        )
    inputs, targets = batch
    inputs = task.as_batch(inputs)  # detection: a list of images of different sizes, padded
    task.check_inputs(inputs, where)
    return inputs, targets
