"""The head registry; each head module registers its heads here when the package is imported."""

from __future__ import annotations

from ...registry import Registry

__all__ = ["HEADS"]

HEADS = Registry("head")
