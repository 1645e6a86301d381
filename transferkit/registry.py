"""Name -> factory registries for backbones, necks and heads."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry", "UnknownNameError"]

_Factory = TypeVar("_Factory", bound=Callable[..., Any])  # what `Registry.register` decorates, unchanged


class Registry:
    """A plain dict of named factories plus a decorator to fill it.

    Args:
        kind: What the registry holds ("backbone", "neck", "head"), used in messages.
        extra_names: Optional callable returning further names that are resolved lazily
            (the torchvision and timm backbones), so listing them costs nothing up front.

    Examples:
        >>> necks = Registry("neck")
        >>> @necks.register("mine")
        ... class Mine: ...
        >>> necks.list("m*")
        ['mine']
    """

    def __init__(self, kind: str, extra_names: Callable[[], Iterable[str]] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._extra_names = extra_names

    def register(self, name: str) -> Callable[[_Factory], _Factory]:
        """Decorator registering a class or factory under ``name``; a second registration raises."""

        def decorator(factory: _Factory) -> _Factory:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
            self._entries[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """Every name, registered and lazily known, sorted."""
        names = set(self._entries)
        if self._extra_names is not None:
            names.update(self._extra_names())
        return sorted(names)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching an fnmatch ``pattern``, whole or after the source (``convnext*``
        matches ``timm/convnext_atto``)."""
        return [
            n
            for n in self.names()
            if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.rpartition("/")[2], pattern)
        ]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; unknown names raise `UnknownNameError`."""
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str) -> UnknownNameError:
        """The error for an unknown ``name``, naming the closest known names."""
        names = self.names()
        # "resnet181" should find "torchvision/resnet18": compare with the part after the source too
        tails: dict[str, str] = {}
        for n in reversed(names):  # "torchvision/x" before "timm/x", as a bare name resolves
            tails.setdefault(n.rpartition("/")[2], n)
        close = [
            tails[t] for t in difflib.get_close_matches(name.rpartition("/")[2], list(tails), n=5, cutoff=0.6)
        ]
        close += difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        close += [n for n in names if name in n]
        close = list(dict.fromkeys(close))[:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return UnknownNameError(
            f"Unknown {self.kind} {name!r}.{hint} See transferkit.list_{self.kind}s() for every name."
        )
