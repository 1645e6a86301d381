"""What `Trainer.fit` does with the data before the first epoch: check the loaders, take the class names
and the preprocessing from them, and warn about data that cannot teach what it seems to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..models.classes import fill_classes
from ..preprocessing import record_data_config
from .data_warnings import warn_about_data
from .loaders import check_length, split_loaders

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["prepare_data"]


def prepare_data(model: TransferModel, loaders: Any) -> tuple[Any, Any, bool]:
    """``(train, val, size_from_batches)`` for `Trainer.fit`'s ``loaders``, the model made ready for them.

    ``size_from_batches`` is True when the loaders do not state their preprocessing, so the input size is
    read from the first batch (`transferkit.preprocessing.record_data_config`).
    """
    train, val = split_loaders(loaders)
    for name, loader in (("train", train), ("val", val)):
        if loader is not None:
            check_length(loader, name)
    fill_classes(model, train)
    size_from_batches = record_data_config(model, train, val)
    warn_about_data(model, train, val)  # val lacking classes; inputs too small for the backbone
    return train, val, size_from_batches
