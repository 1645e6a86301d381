"""What ``fit`` accepts as loaders, checked up front, and a progress bar that iterates them once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["check_length", "progress", "split_loaders"]


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


def check_length(loader: Any, name: str) -> None:
    """Raise unless ``loader`` has a length of at least one batch."""
    try:
        n = len(loader)
    except TypeError:
        raise TypeError(f"the {name} loader has no len(); give its dataset a __len__") from None
    if n == 0:
        raise ValueError(
            f"the {name} loader is empty (0 batches); check the dataset, or lower batch_size "
            "if drop_last=True"
        )


def progress(iterable: Iterable[Any], desc: str, disable: bool) -> Iterator[Any]:
    """Yields from ``iterable`` while a transient tqdm bar counts the items.

    Not ``tqdm(iterable)``: tqdm.auto's class calls ``iter(iterable)`` in its constructor and then iterates
    afresh, so a DataLoader would build a second iterator, spawning its workers twice and drawing one
    more number from the global RNG.
    """
    total = len(iterable) if hasattr(iterable, "__len__") else None
    with tqdm(total=total, desc=desc, leave=False, disable=disable) as bar:
        for item in iterable:
            yield item
            bar.update()
