"""The Trainer's arguments, checked before anything is built: each bad one is named with what to pass."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch

from .distributed import PRECISIONS, available_devices
from .optim import SCHEDULERS
from .recipe import RECIPES

__all__ = ["check_trainer_arguments"]

# name: (kind, smallest allowed value, whether the smallest is allowed, may be None)
_NUMBERS: dict[str, tuple[str, float, bool, bool]] = {
    "epochs": ("int", 1, True, False),
    "grad_accum": ("int", 1, True, False),
    "early_stopping": ("int", 1, True, True),
    "cache_budget": ("int", 0, True, False),
    "seed": ("int", -(2**63), True, True),
    "lr": ("number", 0, False, True),
    "weight_decay": ("number", 0, True, False),
    "layer_decay": ("number", 0, False, True),
    "clip_grad_norm": ("number", 0, False, True),
    "backbone_lr_mult": ("number", 0, True, False),
    "label_smoothing": ("number", 0, True, False),
}
_FLAGS = ("cache_features", "resume", "restore_best", "progress", "compile")


def _check_number(name: str, value: Any) -> None:
    kind, low, inclusive, optional = _NUMBERS[name]
    if value is None and optional:
        return
    wanted = numbers.Integral if kind == "int" else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        example = {"int": "such as 10", "number": "such as 1e-3"}[kind]
        cast = "int" if kind == "int" else "float"
        hint = f" (convert it: {cast}({value!r}))" if isinstance(value, str) else ""
        raise TypeError(
            f"{name} must be {'an int' if kind == 'int' else 'a number'} {example}"
            f"{' or None' if optional else ''}, got {type(value).__name__} {value!r}{hint}"
        )
    number = float(value)  # an Integral or a Real, checked above
    if not number >= low or (number == low and not inclusive):  # `not >=` refuses NaN too
        bound = f">= {low}" if inclusive else f"> {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


# name: (the types it may have, what to pass); None is allowed for each
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "precision": ((str,), "'auto', 'bf16', 'fp16' or 'fp32'"),
    "monitor": ((str,), "a history key such as 'val_loss' or None"),
    "checkpoint_dir": ((str, os.PathLike), "a directory path or None"),
    "cache_dir": ((str, os.PathLike), "a directory path or None"),
    "callbacks": ((list, tuple), "a list of callback objects or None"),
}


def _check_kinds(arguments: Mapping[str, Any]) -> None:
    for name, (kinds, what) in _KINDS.items():
        value = arguments.get(name)
        if value is not None and not isinstance(value, kinds):
            raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    loss = arguments.get("loss")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be callable(logits, targets) -> scalar or None, got {loss!r}")


def _check_device(device: Any) -> None:
    """``"auto"``, or a device torch can parse and this machine has (``"cpu"``, ``"cuda:1"``, ``"mps"``)."""
    if isinstance(device, str) and device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be 'auto' or a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
        ) from None
    if parsed.type == "cpu":
        return
    backend = getattr(torch, parsed.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    count = backend.device_count() if backend is not None and hasattr(backend, "device_count") else 0
    if count == 0 or (parsed.index is not None and parsed.index >= count):
        raise ValueError(
            f"device={device!r}, but this machine has {count} {parsed.type} device(s) (it has "
            f"{', '.join(available_devices())}); use device='auto' (the best one present) or 'cpu'"
        )


def check_trainer_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise naming the first of the Trainer's ``arguments`` of a wrong type, range or vocabulary.

    Raises:
        TypeError: A number given as another type (``lr="1e-3"``), a flag that is not a bool, a path,
            name or list of another type, or a loss that is not callable.
        ValueError: A number out of range (or NaN), an unknown scheduler, recipe or precision, a device this
            machine lacks, or ``resume`` without ``checkpoint_dir``.

    Examples:
        >>> check_trainer_arguments({"epochs": 0})
        Traceback (most recent call last):
        ValueError: epochs must be >= 1, got 0
        >>> check_trainer_arguments({"lr": "1e-3"})
        Traceback (most recent call last):
        TypeError: lr must be a number such as 1e-3 or None, got str '1e-3' (convert it: float('1e-3'))
    """
    for name in _NUMBERS:
        if name in arguments:
            _check_number(name, arguments[name])
    if arguments.get("label_smoothing", 0) >= 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {arguments['label_smoothing']}")
    for name in _FLAGS:
        if name in arguments and not isinstance(arguments[name], bool):
            value = arguments[name]
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    _check_kinds(arguments)
    if "device" in arguments:
        _check_device(arguments["device"])
    scheduler = arguments.get("scheduler", "cosine")
    if not callable(scheduler) and scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; use one of {SCHEDULERS} or a callable")
    recipe = arguments.get("recipe", "auto")
    if recipe not in RECIPES:
        raise ValueError(
            f"unknown recipe {recipe!r}; use one of {list(RECIPES)} (see transferkit.training.recipe)"
        )
    precision = arguments.get("precision", "auto")
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use 'auto' or one of {tuple(PRECISIONS)}")
    if arguments.get("resume") and arguments.get("checkpoint_dir") is None:
        raise ValueError("resume=True needs checkpoint_dir= (the directory holding last.pt)")
