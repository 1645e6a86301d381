"""The Trainer's arguments, checked before anything is built: each bad one is named with what to pass."""

from __future__ import annotations

from typing import Any

from .distributed import PRECISIONS
from .optim import SCHEDULERS

__all__ = ["check_trainer_arguments"]


def check_trainer_arguments(
    *,
    epochs: int,
    grad_accum: int,
    early_stopping: int | None,
    scheduler: Any,
    precision: str,
    resume: bool,
    checkpoint_dir: Any,
    cache_budget: int,
) -> None:
    """Raise ``ValueError`` naming the first argument outside its range or vocabulary.

    Examples:
        >>> check_trainer_arguments(epochs=0, grad_accum=1, early_stopping=None, scheduler="cosine",
        ...     precision="auto", resume=False, checkpoint_dir=None, cache_budget=0)
        Traceback (most recent call last):
        ValueError: epochs, grad_accum and early_stopping must be >= 1, got 0, 1, None
    """
    if cache_budget < 0:
        raise ValueError(f"cache_budget must be >= 0 bytes, got {cache_budget}")
    if epochs < 1 or grad_accum < 1 or (early_stopping is not None and early_stopping < 1):
        raise ValueError(
            f"epochs, grad_accum and early_stopping must be >= 1, got {epochs}, {grad_accum}, "
            f"{early_stopping}"
        )
    if not callable(scheduler) and scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; use one of {SCHEDULERS} or a callable")
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use 'auto' or one of {tuple(PRECISIONS)}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (the directory holding last.pt)")
