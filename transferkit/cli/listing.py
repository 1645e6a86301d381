"""``transferkit list``: the registered backbones, necks or heads, filtered by a pattern, or the weight
tags of one backbone (``transferkit list weights resnet50``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import list_backbones, list_heads, list_necks
from ..models.backbones import weight_tags
from .runs import _say

LISTERS: dict[str, Callable[[str], list[str]]] = {
    "backbones": list_backbones,
    "necks": list_necks,
    "heads": list_heads,
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``list`` subcommand to ``commands``."""
    listing = commands.add_parser("list", help="registered backbones, necks or heads; a backbone's weights")
    listing.add_argument("kind", choices=(*LISTERS, "weights"))
    listing.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="fnmatch pattern; a plain word matches anywhere (for weights: the backbone's name)",
    )
    listing.set_defaults(func=_cmd_list)


def _weights_lines(backbone: str) -> list[str]:
    """One tag per line, the default marked: what ``--pretrained TAG`` accepts for ``backbone``."""
    tags = weight_tags(backbone)
    if not tags:
        raise LookupError(f"{backbone} has no pretrained weights; train it with --pretrained false")
    width = max(len(tag) for tag, _ in tags)
    return [f"{tag:<{width}}  (default: --pretrained true)" if default else tag for tag, default in tags]


def _cmd_list(args: argparse.Namespace) -> int:
    if args.kind == "weights":
        if args.pattern == "*":
            raise ValueError("list weights needs a backbone name, e.g. transferkit list weights resnet50")
        _say(*_weights_lines(args.pattern))
        return 0
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
