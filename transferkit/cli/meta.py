"""What a run folder's ``transferkit.json`` may say, checked once where it is read.

``transferkit train`` and ``demo`` write the file (`transferkit.cli.runs`); ``eval``, ``predict``,
``export`` and ``train --resume`` read it back. A file that is not UTF-8 JSON, not an object, holds a
field the CLI does not write, or a field of another type or range is a `RunMetaError` naming the file,
the field and the fix, never a ``KeyError`` or a bare ``JSONDecodeError`` from further on. Fields may be
missing (a run folder made by hand often holds only ``image_size``); what a command needs it checks
itself (``--resume`` needs ``backbone`` and ``data``).

Examples:
    >>> parse_run_meta(b'{"epochs": 3, "image_size": 64}', "runs/ab/transferkit.json")
    {'epochs': 3, 'image_size': 64}
    >>> parse_run_meta(b'{"epochs": 0}', "runs/ab/transferkit.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    transferkit.cli.meta.RunMetaError: runs/ab/transferkit.json: field 'epochs' must be a whole number ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from typing import Any

from ..data.augment import check_crop_scale
from .options import parse_freeze

__all__ = ["META_FILE", "RUN_META_FIELDS", "RunMetaError", "check_run_meta", "parse_run_meta"]

META_FILE = "transferkit.json"
_FIX = (
    "correct that field (docs/cli.md lists what transferkit train writes there), or train the run again "
    "into a new --out"
)
_WHOLE_FILE_FIX = (
    "restore it from a copy, or train the run again into a new --out (eval, predict and export work "
    "without the file, with the model's own class names)"
)


class RunMetaError(ValueError):
    """A ``transferkit.json`` that transferkit did not write as it is: the message names file and field.

    Attributes:
        problem: What is wrong (file, field, value), without the advice the message ends with.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


def _is_int(value: Any, low: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _is_number(value: Any, low: float = 0.0, *, above: bool = False, below: float = math.inf) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value > low if above else value >= low) and value < below


def _is_freeze(value: Any) -> bool:
    try:
        parse_freeze(value)
    except (argparse.ArgumentTypeError, AttributeError):
        return False
    return True


def _is_crop_scale(value: Any) -> bool:
    if value is None:
        return True
    try:
        check_crop_scale(value)
    except ValueError:
        return False
    return isinstance(value, list)


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _is_metrics(value: Any) -> bool:  # a non-finite metric is recorded as it was (NaN), never a string
    return isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    )


# field: (what it must be, the check); the fields transferkit train and demo write, and only those
RUN_META_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "task": ("a task name such as 'classification'", lambda v: isinstance(v, str) and v != ""),
    "classes": ("a list of class names (strings)", _is_names),
    "data": ("the dataset folder (a string)", lambda v: isinstance(v, str) and v != ""),
    "backbone": ("a backbone name such as 'resnet18'", lambda v: isinstance(v, str) and v != ""),
    "neck": ("a neck name such as 'identity'", lambda v: isinstance(v, str) and v != ""),
    "head": ("a head name such as 'linear'", lambda v: isinstance(v, str) and v != ""),
    "pretrained": ("true, false, a weights tag or a weights file", lambda v: isinstance(v, (bool, str))),
    "freeze": ("a --freeze value such as 'last_n:2'", _is_freeze),
    "epochs": ("a whole number >= 1", lambda v: _is_int(v, 1)),
    "lr": ("a finite number > 0, or null (the default)", lambda v: v is None or _is_number(v, above=True)),
    "batch_size": ("a whole number >= 1", lambda v: _is_int(v, 1)),
    "image_size": ("a whole number >= 1, or null", lambda v: v is None or _is_int(v, 1)),
    "seed": ("a whole number", _is_int),
    "augment": ("an --augment value such as 'light'", lambda v: isinstance(v, str) and v != ""),
    "flip": ("true, false, or null (the task's default)", lambda v: v is None or isinstance(v, bool)),
    "crop_scale": ("[min, max] with 0 < min <= max <= 1, or null (the default)", _is_crop_scale),
    "mixup": ("a finite number >= 0", _is_number),
    "cutmix": ("a finite number >= 0", _is_number),
    "label_smoothing": ("a number from 0 up to (not including) 1", lambda v: _is_number(v, below=1.0)),
    "log": ("'csv', 'tensorboard' or 'mlflow'", lambda v: v in ("csv", "tensorboard", "mlflow")),
    "transferkit_version": ("a version string", lambda v: isinstance(v, str)),
    "status": ("'training' or 'done'", lambda v: v in ("training", "done")),
    "best_epoch": ("a whole number >= 1", lambda v: _is_int(v, 1)),
    "metrics": ("an object of metric names and numbers", _is_metrics),
}


def check_run_meta(meta: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta`` (parsed ``transferkit.json``) if every field is one the CLI writes, of its type and range.

    Raises:
        RunMetaError: ``meta`` is not an object, or a field is unknown or wrong; the message names
            ``source``, the field, what it must be and the fix.
    """
    if not isinstance(meta, dict):
        raise RunMetaError(
            f"{source} holds a JSON {_json_kind(meta)}, not the object transferkit train writes",
            _WHOLE_FILE_FIX,
        )
    for field, value in meta.items():
        if field not in RUN_META_FIELDS:
            raise RunMetaError(
                f"{source}: field {field!r} is not one transferkit writes (it writes "
                f"{', '.join(RUN_META_FIELDS)})",
                "the file is damaged or was edited: remove that field, or train the run again into a new "
                "--out",
            )
        what, valid = RUN_META_FIELDS[field]
        if not valid(value):
            raise RunMetaError(
                f"{source}: field {field!r} must be {what}, got {json.dumps(value)[:80]}",
                f"the file is damaged or was edited: {_FIX}",
            )
    return meta


def parse_run_meta(data: bytes, source: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked content of a ``transferkit.json`` holding ``data`` (see `check_run_meta`).

    Raises:
        RunMetaError: ``data`` is not UTF-8, not JSON (truncated, say), or not what the CLI writes.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunMetaError(
            f"{source} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}), so not the "
            "JSON transferkit train writes",
            _WHOLE_FILE_FIX,
        ) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunMetaError(
            f"{source} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}; truncated or "
            "damaged)",
            _WHOLE_FILE_FIX,
        ) from None
    except RecursionError:
        raise RunMetaError(
            f"{source} nests its JSON too deeply to be what transferkit train writes", _WHOLE_FILE_FIX
        ) from None
    return check_run_meta(meta, source)


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
