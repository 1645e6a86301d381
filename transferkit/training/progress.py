"""Progress output that reads cleanly wherever it lands: a terminal, a notebook or a log file.

A bar that redraws itself (``\\r`` and cursor codes) only renders where something interprets those codes:
a terminal, or a notebook with ipywidgets (tqdm's widget bar). Anywhere else (a log file, a CLI piped to
a file, a notebook without ipywidgets, where ``tqdm.auto`` falls back to the text bar) every redraw stays
in the output, so there the Trainer prints one plain line per epoch instead and shows no transient bars.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator, Sized
from typing import IO, Any

from tqdm import TqdmWarning

with warnings.catch_warnings():  # a notebook without ipywidgets: tqdm warns, and the text bar is handled here
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["EpochProgress", "bar_renders", "epoch_line", "progress", "tqdm"]


def bar_renders(stream: IO[str] | None = None) -> bool:
    """Whether a redrawn bar renders on ``stream`` (default: ``sys.stderr``, where tqdm writes).

    True for tqdm's notebook widget (``tqdm.auto`` picks it in a notebook with ipywidgets) and for a
    terminal; False for files, pipes and a notebook's text output.

    Examples:
        >>> bar_renders(io.StringIO())
        False
    """
    if tqdm.__module__ == "tqdm.notebook":
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def epoch_line(desc: str, row: dict[str, Any]) -> str:
    """One epoch as a line: its losses and metrics, then its time.

    Examples:
        >>> epoch_line("epoch 2/5", {"epoch": 1, "train_loss": 0.41, "val_acc": 0.9, "seconds": 3.2})
        'epoch 2/5: train_loss 0.41, val_acc 0.9 (3.2s)'
    """
    values = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith(("train_", "val_")))
    return f"{desc}: {values} ({row.get('seconds', 0.0):.1f}s)"


class EpochProgress:
    """One bar per epoch over its training and then its validation batches, left as one line at the end;
    where a bar does not render (`bar_renders`), one `epoch_line` per epoch on ``sys.stderr`` instead.

    Args:
        desc: The bar's label, e.g. ``"epoch 1/10"``.
        total: Training plus validation batches.
        enabled: False prints nothing (``Trainer(progress=False)``, ranks other than 0).
    """

    def __init__(self, desc: str, total: int, enabled: bool) -> None:
        self.desc, self.enabled = desc, enabled
        self.redraws = enabled and bar_renders()
        self.bar = tqdm(total=total, desc=desc, disable=not self.redraws)

    def update(self) -> None:
        self.bar.update()

    def set_postfix(self, **values: str) -> None:
        self.bar.set_postfix(values)

    def finish(self, row: dict[str, Any]) -> None:
        """Show the epoch's results: on the bar's last draw, or as one line."""
        if self.redraws:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith(("train_", "val_"))})
        elif self.enabled:
            print(epoch_line(self.desc, row), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[Any], desc: str, disable: bool, bar: Any = None) -> Iterator[Any]:
    """Yields from ``iterable`` while a bar counts the items: ``bar`` when given (an `EpochProgress`),
    else a transient tqdm bar where bars render (`bar_renders`), else none.

    Not ``tqdm(iterable)``: tqdm.auto's class calls ``iter(iterable)`` in its constructor and then iterates
    afresh, so a DataLoader would build a second iterator, spawning its workers twice and drawing one
    more number from the global RNG.
    """
    if bar is not None:
        for item in iterable:
            yield item
            bar.update()
        return
    total = len(iterable) if isinstance(iterable, Sized) else None
    with tqdm(total=total, desc=desc, leave=False, disable=disable or not bar_renders()) as own:
        for item in iterable:
            yield item
            own.update()
