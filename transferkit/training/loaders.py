"""What ``fit`` accepts as loaders and batches, checked up front."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from .feature_cache import CachedBatch

__all__ = ["check_length", "refuse_dataset", "split_batch", "split_loaders"]


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
    if not isinstance(inputs, CachedBatch):
        inputs = task.as_batch(inputs)  # detection: a list of images of different sizes, padded
        task.check_inputs(inputs, where)
    return inputs, targets
