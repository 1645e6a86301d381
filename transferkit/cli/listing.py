"""``transferkit list``: the registered backbones, necks or heads, filtered by a pattern."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import list_backbones, list_heads, list_necks
from .runs import _say

LISTERS: dict[str, Callable[[str], list[str]]] = {
    "backbones": list_backbones,
    "necks": list_necks,
    "heads": list_heads,
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``list`` subcommand to ``commands``."""
    listing = commands.add_parser("list", help="registered backbones, necks or heads")
    listing.add_argument("kind", choices=tuple(LISTERS))
    listing.add_argument(
        "pattern", nargs="?", default="*", help="fnmatch pattern; a plain word matches anywhere"
    )
    listing.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace) -> int:
    pattern = args.pattern
    if not any(char in pattern for char in "*?["):
        pattern = f"*{pattern}*"  # a plain word matches anywhere in the name
    names = LISTERS[args.kind](pattern)
    if not names:
        raise LookupError(
            f"no {args.kind} match {args.pattern!r}; run 'transferkit list {args.kind}' for all"
        )
    _say(*names)
    return 0
