"""Callbacks: objects with any of the Trainer's event methods, each called with the trainer.

`CSVLogger` and `TensorBoard` are the two that ship: the history as a CSV file written as training goes,
and the same values (plus the step loss) as TensorBoard scalars. A callback with ``state_dict()`` and
``load_state_dict(state)`` has its state saved in the checkpoint and restored on resume (`Callbacks`).
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from ..atomic import atomic_write, refuse_symlink

__all__ = ["EVENTS", "CSVLogger", "Callbacks", "TensorBoard", "read_history_csv", "write_history_csv"]

EVENTS = ("on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end", "on_exception")


class Callbacks:
    """The Trainer's callbacks, checked once, called in order.

    Raises:
        TypeError: An object with none of the methods in `EVENTS`.

    Examples:
        >>> class Stop:
        ...     def on_epoch_end(self, trainer):
        ...         trainer.should_stop = trainer.epoch >= 2
        >>> Callbacks([Stop()]).emit("on_epoch_end", trainer)
    """

    def __init__(self, callbacks: Sequence[object] | None) -> None:
        self.callbacks = list(callbacks or ())
        for cb in self.callbacks:
            if not any(hasattr(cb, event) for event in EVENTS):
                raise TypeError(f"callback {cb!r} has none of the methods {EVENTS}")

    def emit(self, event: str, trainer: Any) -> None:
        """Calls ``callback.<event>(trainer)`` on each callback that has it."""
        for cb in self.callbacks:
            handler = getattr(cb, event, None)
            if handler is not None:
                handler(trainer)

    def emit_exception(self, trainer: Any, error: BaseException) -> None:
        """Calls ``callback.on_exception(trainer, error)`` on each callback that has it, when ``fit`` stops
        on ``error`` after ``on_fit_start`` (a ``KeyboardInterrupt`` included) instead of ending.

        The caller raises ``error`` again afterwards; a handler that raises itself is reported in a
        warning and the others still run, so a failing logger never hides why training stopped.
        """
        for cb in self.callbacks:
            handler = getattr(cb, "on_exception", None)
            if handler is None:
                continue
            try:
                handler(trainer, error)
            except Exception as failed:  # noqa: BLE001 - reported, and the training error goes on
                warnings.warn(
                    f"{type(cb).__name__}.on_exception raised {type(failed).__name__}: {failed}",
                    UserWarning,
                    stacklevel=3,
                )

    def state_dict(self) -> list[dict[str, Any] | None]:
        """Per callback, ``{"name": its class name, "state": its state_dict()}`` (None: it keeps no state).

        Raises:
            TypeError: A state that holds more than tensors and plain data (the checkpoint could not be
                read back safely); the message names the callback.
        """
        states: list[dict[str, Any] | None] = []
        for cb in self.callbacks:
            if not callable(getattr(cb, "state_dict", None)):
                states.append(None)
                continue
            state = cb.state_dict()  # type: ignore[attr-defined]
            odd = _not_plain(state)
            if odd is not None:
                raise TypeError(
                    f"callback {type(cb).__name__}.state_dict() returned a {odd} inside; a checkpoint holds "
                    "tensors and plain data only (dict, list, tuple, str, int, float, bool, None): convert it"
                )
            states.append({"name": type(cb).__name__, "state": state})
        return states

    def load_state_dict(self, states: list[dict[str, Any] | None] | None, where: str) -> None:
        """Gives each callback with ``load_state_dict`` the state saved at its position for its class.

        ``states`` None: a checkpoint written before callbacks had state. A callback that finds no state
        of its own starts afresh, and a saved state that finds no callback is left out: one warning names
        them (``where``: the checkpoint).
        """
        saved = list(states or [])
        unmatched = []
        for i, cb in enumerate(self.callbacks):
            entry = saved[i] if i < len(saved) else None
            name = type(cb).__name__
            if entry is not None and entry["name"] == name and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(entry["state"])  # type: ignore[attr-defined]
                saved[i] = None
            elif callable(getattr(cb, "state_dict", None)):
                unmatched.append(f"{name} (callback {i + 1}) starts afresh")
        unmatched += [
            f"the state of {e['name']} (callback {i + 1}) is not used" for i, e in enumerate(saved) if e
        ]
        if unmatched:
            warnings.warn(
                f"{where} holds no matching state for every callback: {'; '.join(unmatched)}. Pass the "
                "callbacks of the interrupted run, in the same order, to resume them exactly",
                UserWarning,
                stacklevel=3,
            )


def _not_plain(value: Any) -> str | None:
    """The type name of the first value in ``value`` that is not a tensor or plain data, or None."""
    if isinstance(value, (Tensor, str, int, float, bool, type(None))):
        return None
    if isinstance(value, (list, tuple)):
        items: Any = value
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    else:
        return type(value).__name__
    return next((odd for odd in map(_not_plain, items) if odd is not None), None)


class CSVLogger:
    """Writes the history to a CSV file as it goes: one row per epoch, rewritten whole after each.

    A rewrite (`write_history_csv`: atomic, never through a symbolic link) keeps the file complete at
    every moment and lets the columns grow when a later epoch adds a key.

    Args:
        path: The CSV file (parent folders are created).

    Examples:
        >>> logger = CSVLogger("runs/ab/history.csv")
        >>> Trainer(model, epochs=3, callbacks=[logger]).fit(loaders)  # doctest: +SKIP
        >>> Path("runs/ab/history.csv").read_text().splitlines()[0]  # doctest: +SKIP
        'epoch,lr,trainable_blocks,train_loss,val_loss,val_acc,seconds'
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Any) -> None:
        if trainer.is_main:
            write_history_csv(trainer.history, self.path)


def write_history_csv(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Writes ``history`` (a list of dicts) to ``path`` as CSV; columns in first-seen order.

    The file is written atomically (`transferkit.atomic.atomic_write`): a reader sees the previous rows
    or the new ones, never half a file.

    Raises:
        FileExistsError: ``path`` is a symbolic link (never written through).
    """
    path = Path(path)
    columns = list(dict.fromkeys(key for row in history for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)
    return path


def read_history_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a history CSV, numbers parsed back (ints stay ints); empty cells are left out."""
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class TensorBoard:
    """Logs every epoch's history values (and the training loss every ``log_every`` steps) to TensorBoard.

    Needs the ``tensorboard`` package (``pip install tensorboard``). Only rank 0 writes. A ``log_dir``
    that is a symbolic link is refused when the first value is written: events never go through one.
    Every value is logged at ``trainer.global_step`` (optimizer steps so far), which a resumed run
    continues, so the curves of an interrupted and resumed run join without overlapping.

    Args:
        log_dir: The event files' folder; view it with ``tensorboard --logdir LOG_DIR``.
        log_every: Optimizer steps between loss points (0: epochs only); the point is the loss of the
            batch that ended the step.

    Raises:
        ImportError: tensorboard is not installed (the message gives the install command).
    """

    def __init__(self, log_dir: str | os.PathLike[str], log_every: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("the TensorBoard callback needs tensorboard: pip install tensorboard") from err
        if log_every < 0:
            raise ValueError(f"log_every must be >= 0, got {log_every}")
        self.log_dir, self.log_every = Path(log_dir), log_every
        self._writer_class = SummaryWriter
        self._writer: Any = None
        self._seen = 0  # trainer.global_step at the last batch

    def _open(self) -> Any:
        if self._writer is None:
            refuse_symlink(self.log_dir, "TensorBoard folder")
            self._writer = self._writer_class(log_dir=str(self.log_dir))
        return self._writer

    def on_fit_start(self, trainer: Any) -> None:
        self._seen = trainer.global_step

    def on_batch_end(self, trainer: Any) -> None:
        step, stepped = trainer.global_step, trainer.global_step != self._seen
        self._seen = step
        if stepped and trainer.is_main and self.log_every and step % self.log_every == 0:
            self._open().add_scalar("train/loss_step", float(trainer.loss), step)

    def on_epoch_end(self, trainer: Any) -> None:
        if not trainer.is_main:
            return
        writer, row = self._open(), trainer.history[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                group = key.split("_", 1)[0] if key.startswith(("train_", "val_")) else "epoch"
                writer.add_scalar(f"{group}/{key}", value, trainer.global_step)
        writer.flush()

    def on_fit_end(self, trainer: Any) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_exception(self, trainer: Any, error: BaseException) -> None:
        self.on_fit_end(trainer)  # what was logged is flushed and the file closed
