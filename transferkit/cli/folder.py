"""What a run folder holds: the names a run writes, and the checks before one writes or deletes there.

A run writes only the entries named here (`RUN_FILES`, and in `RUN_FOLDERS` only the files their
patterns allow), so these are also all that ``--overwrite`` ever deletes: `entries_to_replace` refuses a
folder holding anything else, naming it, before anything is deleted. A symbolic link among them is
refused before a run writes (`refuse_linked_entries`): transferkit never writes through one.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..atomic import deferred_interrupt, refuse_symlink
from .lock import LOCK_FILE
from .meta import META_FILE, RunMetaError, parse_run_meta

__all__ = [
    "CHECKPOINT_DIR",
    "HISTORY_CSV",
    "HISTORY_FILE",
    "MLFLOW_DIR",
    "RUN_FILES",
    "RUN_FOLDERS",
    "TENSORBOARD_DIR",
    "entries_to_replace",
    "not_a_run",
    "refuse_linked_entries",
    "remove_entries",
]

HISTORY_FILE = "history.json"
HISTORY_CSV = "history.csv"
CHECKPOINT_DIR = "checkpoint"  # the Trainer's last.pt while a run trains; removed when it is done
TENSORBOARD_DIR = "tb"
MLFLOW_DIR = "mlruns"  # --log mlflow: MLflow's file store, a tree in its own layout
# model.save's two files, the CLI's own, the pictures (train's plots, the task's metric plot being
# confusion.png or class_iou.png, and what predict draws into a detection run's folder) and the report
RUN_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        META_FILE,
        HISTORY_FILE,
        HISTORY_CSV,
        "history.png",
        "predictions.png",
        "confusion.png",
        "class_iou.png",
        "predicted_boxes.png",
        "report.html",
    }
)
# folder: the names of the files a run writes in it
RUN_FOLDERS = {
    CHECKPOINT_DIR: re.compile(r"last\.pt(\.tmp)?|\.last\.pt\.[0-9a-f]+\.tmp"),
    TENSORBOARD_DIR: re.compile(r"events\.out\.tfevents\..+"),
}
# an atomic write killed before its rename leaves `.NAME.RANDOM.tmp` (transferkit.atomic), older
# versions `NAME.tmp`
_STALE_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]+\.tmp|(?P<old>.+)\.tmp")


def not_a_run(folder: Path) -> str | None:
    """Why ``folder`` is not a run that transferkit wrote, or None when it is one.

    A run folder has a ``transferkit.json`` that the CLI wrote: valid (`transferkit.cli.meta`) and with
    the ``status`` and ``transferkit_version`` every run records. A saved model alone
    (``config.json`` + ``model.safetensors``) is not a run: such a folder may come from anywhere.
    """
    path = folder / META_FILE
    if path.is_symlink():
        return f"its {META_FILE} is a symbolic link"
    if not path.is_file():
        return f"it has no {META_FILE}"
    try:
        meta = parse_run_meta(path.read_bytes(), path)
    except RunMetaError as err:
        return f"its {META_FILE} is not one transferkit wrote ({err.problem})"
    missing = [field for field in ("status", "transferkit_version") if field not in meta]
    if missing:
        return f"its {META_FILE} lacks {' and '.join(map(repr, missing))}, which every run records"
    return None


def _foreign(entry: Path) -> list[str]:
    """The parts of ``entry`` (a run folder's entry) that no run writes: itself, or files inside it."""
    if entry.is_symlink():
        return [f"{entry.name} (a symbolic link)"]
    if entry.is_file():
        stale = _STALE_TEMP.fullmatch(entry.name)
        written_as = (stale["name"] or stale["old"]) if stale else entry.name
        return [] if written_as in RUN_FILES else [entry.name]
    if entry.name == MLFLOW_DIR and entry.is_dir():  # MLflow writes the whole tree, links excepted
        links = [p for p in sorted(entry.rglob("*")) if p.is_symlink()]
        return [f"{entry.name}/{p.relative_to(entry)} (a symbolic link)" for p in links]
    pattern = RUN_FOLDERS.get(entry.name)
    if pattern is None or not entry.is_dir():
        return [entry.name + ("/" if entry.is_dir() else "")]
    return [
        f"{entry.name}/{inner.name}" + (" (a symbolic link)" if inner.is_symlink() else "")
        for inner in sorted(entry.iterdir())
        if inner.is_symlink() or not inner.is_file() or not pattern.fullmatch(inner.name)
    ]


def entries_to_replace(folder: Path, flag: str = "--overwrite") -> list[Path]:
    """The entries of the run in ``folder`` that replacing it deletes: all of them but the lock.

    Nothing is deleted here; `remove_entries` does that once everything else is checked.

    Raises:
        FileExistsError: ``folder`` is not a run (`not_a_run`), or holds something no run writes (the
            message names up to ten of those).
    """
    entries = sorted(p for p in folder.iterdir() if p.name != LOCK_FILE)
    why = not_a_run(folder)
    if why is not None:
        raise FileExistsError(
            f"{flag} replaces only a run folder that transferkit train wrote, and {folder} is not one: "
            f"{why}. Nothing was deleted; empty it yourself, or choose another --out"
        )
    foreign = [name for entry in entries for name in _foreign(entry)]
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise FileExistsError(
            f"{flag} deletes only what a run writes, and {folder} also holds {shown}, which no run writes. "
            "Nothing was deleted; move those away, or choose another --out"
        )
    return entries


def remove_entries(entries: Sequence[Path]) -> None:
    """Delete ``entries`` (files and folders from `entries_to_replace`), `META_FILE` last.

    Ctrl-C is held until the deletion is done; ``kill -9`` midway leaves the ``transferkit.json``, so
    the folder is still a run that ``--overwrite`` replaces.
    """
    with deferred_interrupt():
        for entry in sorted(entries, key=lambda entry: entry.name == META_FILE):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def refuse_linked_entries(folder: Path) -> None:
    """Refuse a run folder where an entry a run writes is a symbolic link (checked before any write).

    Raises:
        FileExistsError: One is a link (the message names it and its target).
    """
    names = [*sorted(RUN_FILES), *sorted(RUN_FOLDERS), MLFLOW_DIR, LOCK_FILE]
    names += [f"{CHECKPOINT_DIR}/last.pt", f"{CHECKPOINT_DIR}/last.pt.tmp"]
    for name in names:
        refuse_symlink(folder / name, "run folder entry")
