"""The neck registry; each neck module registers its necks here when the package is imported."""

from __future__ import annotations

from ...registry import Registry

__all__ = ["NECKS"]

NECKS = Registry("neck")
