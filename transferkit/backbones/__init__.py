"""Backbones: every torchvision classification model and every timm model with ``features_only``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry
from .base import Backbone
from .timm import TimmBackbone, timm_names
from .torchvision import TorchvisionBackbone, torchvision_names

__all__ = ["BACKBONES", "Backbone", "TimmBackbone", "TorchvisionBackbone", "create_backbone", "resolve_name"]


def _library_names() -> list[str]:
    return [f"torchvision/{n}" for n in torchvision_names()] + [f"timm/{n}" for n in timm_names()]


BACKBONES = Registry("backbone", extra_names=_library_names)


def resolve_name(name: str) -> str:
    """The canonical name: registered names as they are, ``source/name`` for library models.

    A bare name means torchvision when torchvision has it, else timm.
    """
    if name in BACKBONES:
        return name
    source, _, arch = name.partition("/")
    if arch:
        known = torchvision_names() if source == "torchvision" else timm_names() if source == "timm" else ()
        if arch in known or (source == "timm" and arch.partition(".")[0] in known):
            return name
    elif name in torchvision_names():
        return f"torchvision/{name}"
    elif name.partition(".")[0] in timm_names():
        return f"timm/{name}"
    raise BACKBONES.unknown(name)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered or known as ``name`` (see `resolve_name`)."""
    name = resolve_name(name)
    if name in BACKBONES:
        return BACKBONES.get(name)(**kwargs)
    source, _, arch = name.partition("/")
    cls = TorchvisionBackbone if source == "torchvision" else TimmBackbone
    return cls(arch, **kwargs)
