"""The ``transferkit`` command: train, lr-find, eval, report, predict, export, list and demo.

Every subcommand is a thin layer over the library (``build_model``, the data loaders, ``Trainer``), so a
run on the command line and the same run in Python give the same model. A trained run folder holds what
``model.save`` writes (``config.json`` with the class names, ``model.safetensors``) plus
``transferkit.json`` (the task, the image size and the training options, which ``eval``, ``predict`` and
``train --resume`` read back), ``history.json``, ``history.png``, ``predictions.png`` and, for a run
with a validation split, ``report.html`` (a self-contained page that ``report`` writes again); while
training it also holds the Trainer's checkpoint, so an interrupted run continues with ``train --resume``.

Errors are printed as one line on stderr with a non-zero exit status (1 for a failed command, 2 for bad
arguments); set ``TRANSFERKIT_DEBUG=1`` to see the traceback instead.

Each subcommand lives in its own module (``train``, ``lr_find``, ``evaluate``, ``report``, ``predict``,
``export``, ``listing``, ``demo``) with an ``add_parser`` that `build_parser` calls; ``options`` holds the
argument types they share, ``runs`` the reading and writing of run folders and ``run_report`` the
building of ``report.html``. What keeps a run folder safe is in
three small modules: ``lock`` (one command per folder), ``folder`` (the entries a run writes, the only
ones ``--overwrite`` deletes, never written through a symbolic link) and ``meta`` (``transferkit.json``
checked where it is read).

Examples:
    $ transferkit train --data hymenoptera_data --backbone resnet18 --freeze last_n:2 --epochs 5 --out runs/ab
    $ transferkit lr-find --data hymenoptera_data --backbone resnet18
    $ transferkit eval --model runs/ab --data hymenoptera_data
    $ transferkit report runs/ab
    $ transferkit predict --model runs/ab bee.jpg ant.jpg
    $ transferkit train --resume --out runs/ab
    $ transferkit list backbones convnext
    $ transferkit list weights resnet50
    $ transferkit demo
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from . import demo, evaluate, export, listing, lr_find, predict, report, train
from .evaluate import evaluate_folder
from .options import FreezeSpec, UsageError, _Parser, parse_freeze, parse_pretrained
from .predict import predict_files

__all__ = [
    "FreezeSpec",
    "build_parser",
    "evaluate_folder",
    "main",
    "parse_freeze",
    "parse_pretrained",
    "predict_files",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``transferkit`` argument parser (subcommands train, lr-find, eval, report, predict, export, list,
    demo).

    Examples:
        >>> args = build_parser().parse_args(["list", "heads"])
        >>> args.kind, args.pattern
        ('heads', '*')
    """
    parser = _Parser(prog="transferkit", description="Transfer learning on images from the command line.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subcommands = (train, lr_find, evaluate, report, predict, export, listing, demo)  # the order --help lists
    for command in subcommands:
        command.add_parser(commands)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _usage_error(err: UsageError) -> int:
    print(f"{err.prog}: error: {_one_line(err)} (see {err.prog} --help)", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``transferkit`` command; returns the exit status (0 ok, 1 failed, 2 bad arguments).

    Examples:
        >>> main(["list", "heads"])  # doctest: +SKIP
        fcn
        linear
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help and --version
        return int(exit.code or 0)
    except UsageError as err:
        return _usage_error(err)
    try:
        return args.func(args)
    except UsageError as err:  # options that only the command itself can check (train --resume)
        return _usage_error(err)
    except KeyboardInterrupt:
        print(f"transferkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("TRANSFERKIT_DEBUG"):
            raise
        print(f"transferkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
