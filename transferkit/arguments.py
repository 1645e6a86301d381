"""`build_model`'s arguments, checked before anything is built: each bad one is named with what to pass.

The backbone, neck and head registries check names (with close matches), the backbones check
``out_indices`` and ``output_stride`` against their levels; what is left is checked here: the types and
ranges of the plain arguments, and the keys of ``neck_kwargs`` / ``head_kwargs`` against what the neck
and head take, so that a typo is a ValueError naming the argument, not a TypeError from a constructor.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["check_build_arguments", "check_part_kwargs"]


def check_build_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise ValueError or TypeError naming the first of `build_model`'s ``arguments`` that is wrong.

    Examples:
        >>> check_build_arguments({"backbone": "resnet18", "neck": "identity", "head": "linear",
        ...     "num_classes": 2, "pretrained": False, "in_chans": 0})
        Traceback (most recent call last):
        ValueError: in_chans must be an int >= 1 (3 for RGB images), got 0
    """
    backbone, num_classes = arguments["backbone"], arguments["num_classes"]
    in_chans, pretrained = arguments["in_chans"], arguments["pretrained"]
    if not isinstance(backbone, (str, nn.Module)):
        raise TypeError(f"backbone must be a name such as 'resnet18' or an nn.Module, got {backbone!r}")
    for part in ("neck", "head"):
        value = arguments[part]
        if not isinstance(value, str):
            raise TypeError(f"{part} must be a registered name (see list_{part}s()), got {value!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1 (3 for RGB images), got {in_chans!r}")
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(
            f"pretrained must be True, False, a weights tag or a path to a weights file, got {pretrained!r}"
        )
    if isinstance(pretrained, str) and not pretrained.strip():
        raise ValueError("pretrained is an empty string; pass True, False, a weights tag or a file path")
    for name in ("backbone_kwargs", "neck_kwargs", "head_kwargs"):
        kwargs = arguments.get(name)
        if kwargs is not None and (
            not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)
        ):
            raise TypeError(f"{name} must be a dict of keyword arguments (str keys), got {kwargs!r}")


def check_part_kwargs(
    name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any] | None, given: int
) -> None:
    """Raise ValueError if ``kwargs`` (``neck_kwargs``, ``head_kwargs``) has keys ``factory`` does not take.

    ``given`` counts the leading parameters `build_model` passes itself (the feature info, the class count);
    a factory that takes ``**kwargs`` is not checked.

    Examples:
        >>> def linear(feature_info, num_classes, dropout=0.0): ...
        >>> check_part_kwargs("head_kwargs", linear, {"drop": 0.1}, given=2)
        Traceback (most recent call last):
        ValueError: head_kwargs has unexpected drop: linear takes dropout
    """
    if not kwargs:
        return
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): the factory checks its own
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = [p.name for p in parameters[given:] if p.kind in named]
    unexpected = sorted(set(kwargs) - set(takes))
    if unexpected:
        what = getattr(factory, "__name__", type(factory).__name__)
        accepted = ", ".join(takes) or "no arguments"
        raise ValueError(f"{name} has unexpected {', '.join(unexpected)}: {what} takes {accepted}")
