"""Necks: map a list of feature maps to a list of feature maps, sized from ``feature_info``.

A neck is built as ``neck(feature_info, **kwargs)`` and exposes its own ``feature_info``;
``levels_read(head_levels)`` names the input levels it needs for the output levels a head reads, and a
neck with layers per level may ``prune(head_levels)`` the ones no head output needs. ``identity.py``
passes the maps through, ``pyramid.py`` holds ``fpn_lite`` and ``pan``, ``aspp.py`` DeepLabV3's ``aspp``,
``simple_pyramid.py`` ViTDet's ``simple_pyramid`` (strides 4-32 from a ViT's one-stride map); a neck that
builds a pyramid itself says so with ``builds_pyramid = True``.
"""

from __future__ import annotations

from .aspp import ASPP, ASPPNeck, default_rates
from .identity import IdentityNeck
from .pyramid import PAN, FPNLite
from .registry import NECKS
from .simple_pyramid import LayerNorm2d, SimplePyramid, SimplePyramidFirst

__all__ = [
    "ASPP",
    "NECKS",
    "PAN",
    "ASPPNeck",
    "FPNLite",
    "IdentityNeck",
    "LayerNorm2d",
    "SimplePyramid",
    "SimplePyramidFirst",
    "default_rates",
]
