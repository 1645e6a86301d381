"""Callbacks: objects with any of the Trainer's event methods, each called with the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["EVENTS", "Callbacks"]

EVENTS = ("on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end")


class Callbacks:
    """The Trainer's callbacks, checked once, called in order.

    Raises:
        TypeError: An object with none of the methods in `EVENTS`.

    Examples:
        >>> class Stop:
        ...     def on_epoch_end(self, trainer):
        ...         trainer.should_stop = trainer.epoch >= 2
        >>> Callbacks([Stop()]).emit("on_epoch_end", trainer)
    """

    def __init__(self, callbacks: Sequence[object] | None) -> None:
        self.callbacks = list(callbacks or ())
        for cb in self.callbacks:
            if not any(hasattr(cb, event) for event in EVENTS):
                raise TypeError(f"callback {cb!r} has none of the methods {EVENTS}")

    def emit(self, event: str, trainer: Any) -> None:
        """Calls ``callback.<event>(trainer)`` on each callback that has it."""
        for cb in self.callbacks:
            handler = getattr(cb, event, None)
            if handler is not None:
                handler(trainer)
