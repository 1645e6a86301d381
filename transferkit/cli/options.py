"""The command line's own parts: the parser class, its error, and the argument types the commands share.

`parse_pretrained` and `parse_freeze` turn ``--pretrained`` and ``--freeze`` into what `build_model` and
``model.freeze`` take; the others reject bad numbers while parsing, so a typo never starts a run.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, cast

from ..data.augment import check_crop_scale
from ..models.model import TransferModel

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")
FREEZE_GRAMMAR = "auto, all, none, last_n:K, gradual[:N[:STEP[:EVERY]]], lora[:R[:ALPHA]], bitfit or norm"
CROP_SCALE_GRAMMAR = (
    "MIN or MIN,MAX with 0 < MIN <= MAX <= 1 (fractions of the image's area), e.g. 0.5 or 0.5,1"
)


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments as one line (and a pointer to ``--help``) instead of usage plus message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


class FreezeSpec(NamedTuple):
    """A parsed ``--freeze``: the policy, its ``model.freeze`` keyword arguments and the text given."""

    policy: str
    kwargs: dict[str, int]
    text: str

    def apply(self, model: TransferModel, train_loader: Any = None) -> None:
        """Freeze ``model`` with this policy (``model.freeze`` checks the numbers against its blocks);
        ``auto`` leaves it to the Trainer's default recipe (`transferkit.training.recipe`)."""
        if self.policy == "auto":
            return
        model.freeze(self.policy, **cast(dict[str, Any], self.kwargs))  # ints for n, step, every, r, alpha


def parse_pretrained(text: str) -> bool | str:
    """``--pretrained``: ``true``/``false``, a local weights file, or a weights tag.

    Raises:
        argparse.ArgumentTypeError: A path with a weights suffix that does not exist.

    Examples:
        >>> parse_pretrained("false"), parse_pretrained("IMAGENET1K_V2")
        (False, 'IMAGENET1K_V2')
    """
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0", "none"):
        return False
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~someone" with no such user: not a path to expand, so take it as written
        path = Path(text)
    if path.is_file():
        return str(path)
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"weights file {text} does not exist; give an existing .safetensors/.pth/.pt file, "
            "true, false or a weights tag"
        )
    return text


def parse_freeze(text: str) -> FreezeSpec:
    """``--freeze``: ``auto``, ``all``, ``none``, ``last_n:K``, ``gradual[:N[:STEP[:EVERY]]]``,
    ``lora[:R[:ALPHA]]`` (rank and scale of the adapters, default 8 and 16), ``bitfit`` or ``norm``.

    The numbers are checked against the backbone (``K <= len(model.blocks)``) by ``model.freeze``.

    Raises:
        argparse.ArgumentTypeError: An unknown policy, a missing or extra number, or a non-integer.

    Examples:
        >>> parse_freeze("gradual:2:1:3")
        FreezeSpec(policy='gradual', kwargs={'n': 2, 'step': 1, 'every': 3}, text='gradual:2:1:3')
    """
    policy, *numbers = text.strip().split(":")
    names = {
        "auto": (),
        "all": (),
        "none": (),
        "last_n": ("n",),
        "gradual": ("n", "step", "every"),
        "lora": ("r", "alpha"),
        "bitfit": (),
        "norm": (),
    }
    if policy not in names:
        raise argparse.ArgumentTypeError(f"unknown freeze policy {policy!r}; use {FREEZE_GRAMMAR}")
    if policy == "last_n" and len(numbers) != 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: last_n needs one number, the blocks that train, as last_n:K (e.g. last_n:4)"
        )
    if len(numbers) > len(names[policy]):
        raise argparse.ArgumentTypeError(f"{text!r} has too many numbers; use {FREEZE_GRAMMAR}")
    kwargs = {}
    for name, value in zip(names[policy], numbers):
        try:
            kwargs[name] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {name} must be a whole number, got {value!r}; use {FREEZE_GRAMMAR}"
            ) from None
    return FreezeSpec(policy, kwargs, text.strip())


def parse_crop_scale(text: str) -> list[float]:
    """``--crop-scale``: ``MIN`` (crops from MIN up to the whole image) or ``MIN,MAX``, as a list that
    ``transferkit.json`` keeps.

    Raises:
        argparse.ArgumentTypeError: Not one or two numbers, or outside ``0 < MIN <= MAX <= 1``.

    Examples:
        >>> parse_crop_scale("0.5"), parse_crop_scale("0.2,0.8")
        ([0.5, 1.0], [0.2, 0.8])
    """
    try:
        values = [float(part) for part in text.split(",")]
        if len(values) not in (1, 2):
            raise ValueError
        return list(check_crop_scale(values if len(values) == 2 else [values[0], 1.0]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {CROP_SCALE_GRAMMAR}; got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _device(text: str) -> str:
    """``--device``, checked against this machine before any work starts."""
    from ..training.distributed import resolve_device

    if text != "auto":
        try:
            resolve_device(text, 0)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", type=_device, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1..."
    )
