"""Backbones: every torchvision classification model and every timm model with ``features_only``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...registry import Registry
from .base import Backbone
from .timm import TimmBackbone, timm_names
from .torchvision import TorchvisionBackbone, torchvision_names

__all__ = [
    "BACKBONES",
    "Backbone",
    "TimmBackbone",
    "TorchvisionBackbone",
    "create_backbone",
    "resolve_name",
    "weight_tags",
]


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


def weight_tags(backbone: str) -> list[tuple[str, bool]]:
    """The pretrained weight tags a torchvision or timm backbone has, each with whether it is the default.

    A tag is what ``pretrained=`` takes besides True, False and a path; the default is what True loads.

    Raises:
        ValueError: An unknown name (with the closest matches), or a registered backbone (its factory
            decides what it loads).

    Examples:
        >>> weight_tags("resnet50")
        [('IMAGENET1K_V1', False), ('IMAGENET1K_V2', True)]
        >>> weight_tags("timm/resnet50")[:2]
        [('a1_in1k', True), ('a1h_in1k', False)]
    """
    name = resolve_name(backbone)
    source, _, arch = name.partition("/")
    if source == "torchvision":
        import torchvision.models as tvm

        enum = tvm.get_model_weights(arch)
        return [(weights.name, weights is enum.DEFAULT) for weights in enum]
    if source == "timm":
        import timm

        arch = arch.partition(".")[0]
        default = getattr(timm.models.get_pretrained_cfg(arch), "tag", None)
        tags = [full.partition(".")[2] for full in timm.list_pretrained(f"{arch}.*")]
        return [(tag, tag == default) for tag in tags]
    raise ValueError(f"{backbone!r} is a registered backbone: the weights it loads are up to its factory")
