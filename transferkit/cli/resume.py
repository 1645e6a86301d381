"""A run folder that exists already: ``train --resume`` continues it, ``--overwrite`` replaces it.

``transferkit train`` writes its arguments into the run folder's ``transferkit.json`` before training
starts, and the Trainer checkpoints into the folder after every epoch, so ``--resume --out RUN`` needs
nothing else: it rebuilds the same run from the saved arguments and continues after the last completed
epoch, ending with the weights the uninterrupted run would have. Options given with ``--resume`` must
agree with the saved ones (a changed run would not end as the original would); only ``--device`` may
differ. Without either flag, an ``--out`` folder that holds anything is refused; ``--overwrite`` replaces
only a run transferkit wrote, and only when the folder holds nothing else (`transferkit.cli.folder`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from .folder import (
    CHECKPOINT_DIR,
    HISTORY_CSV,
    MLFLOW_DIR,
    TENSORBOARD_DIR,
    entries_to_replace,
    not_a_run,
)
from .lock import LOCK_FILE
from .meta import META_FILE
from .options import FreezeSpec, UsageError
from .runs import _read_meta

# The options that define a run, with their defaults; the parser's own defaults are None, so that an
# option given with --resume can be told from one left out.
TRAIN_DEFAULTS: dict[str, Any] = {
    "data": None,
    "backbone": None,
    "neck": "identity",
    "head": "linear",
    "pretrained": True,
    "freeze": "auto",
    "epochs": 10,
    "lr": None,  # the Trainer's default: its recipe's rates (`training.recipe`)
    "batch_size": 32,
    "image_size": None,
    "seed": 0,
    "augment": "light",
    "flip": None,  # the task's default: no flips for classification, flips for segmentation and detection
    "crop_scale": None,  # the task's default: (0.7, 1) for classification, (0.5, 1) for segmentation
    "mixup": 0.0,
    "cutmix": 0.0,
    "label_smoothing": 0.0,
    "log": "csv",
}
_PROG = "transferkit train"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_new_run(out: Path, *, overwrite: bool) -> list[Path]:
    """Check that ``out`` can take a new run; return what of an earlier run there ``overwrite`` replaces.

    ``out`` may be absent or empty (its lock file aside), or, with ``overwrite``, hold a run transferkit
    wrote and nothing else. Nothing is deleted here: the caller removes the returned entries
    (`transferkit.cli.folder.remove_entries`) once the new run's arguments are all checked.

    Raises:
        FileExistsError: ``out`` is a file; or it holds something and ``overwrite`` is False; or it is not
            a run transferkit wrote, or holds files no run writes (named), and ``overwrite`` is True.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder")
    if not out.exists() or not any(p.name != LOCK_FILE for p in out.iterdir()):
        return []
    why = not_a_run(out)
    if not overwrite and why is None:
        raise FileExistsError(
            f"--out {out} already holds a run; pass --resume to continue an interrupted run there, "
            "--overwrite to replace it, or choose another --out"
        )
    if not overwrite:
        raise FileExistsError(
            f"--out {out} already holds files, and no run transferkit wrote ({why}); choose another --out, "
            "or empty it yourself"
        )
    return entries_to_replace(out)


def discard_unstarted_run(out: Path) -> None:
    """Remove what a new run wrote into ``out`` before it failed in its first epoch.

    Such a run has nothing to resume (no checkpoint), and its ``transferkit.json`` alone would make the
    corrected command refuse ``out`` as taken; so a failed new run leaves ``out`` as it found it (empty).
    Ctrl-C and ``kill -9`` do not come here: they keep the run for ``--resume``.
    """
    # this run made them (``out`` was empty, or cleared)
    for name in (CHECKPOINT_DIR, TENSORBOARD_DIR, MLFLOW_DIR):
        folder = out / name
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
    for name in (HISTORY_CSV, META_FILE):  # the run's record last: while anything is left, it is a run
        (out / name).unlink(missing_ok=True)


def _normalised(name: str, value: Any) -> Any:
    """An option's value as ``transferkit.json`` keeps it (absolute paths, the freeze text)."""
    if name == "data":
        return str(Path(value).expanduser().resolve())
    if name == "freeze":
        return value.text if isinstance(value, FreezeSpec) else str(value)
    if name == "pretrained" and isinstance(value, str) and Path(value).expanduser().is_file():
        return str(Path(value).expanduser().resolve())
    return value


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k: _normalised(k, getattr(args, k)) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}


def new_run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a new run: those given and the defaults of the rest, as they are saved.

    Raises:
        UsageError: ``--data`` or ``--backbone`` is missing.
    """
    missing = [_flag(k) for k in ("data", "backbone") if getattr(args, k) is None]
    if missing:
        raise UsageError(
            _PROG, f"the following arguments are required: {', '.join(missing)} (unless --resume)"
        )
    return {**TRAIN_DEFAULTS, **_given(args)}


def no_run_to_resume(out: Path, why: str | None = None) -> FileNotFoundError:
    """The error for ``--resume`` into ``out`` where no run started by ``transferkit train`` is."""
    why = why or f"no {META_FILE} with its arguments"
    return FileNotFoundError(
        f"--resume: {out} holds no run started by transferkit train ({why}); start one without --resume"
    )


def resumed_arguments(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The saved options of the run in ``out``, checked against those given again with ``--resume``.

    Raises:
        FileNotFoundError: ``out`` holds no run started by ``transferkit train``.
        RunMetaError: Its ``transferkit.json`` is damaged (`transferkit.cli.meta`).
        UsageError: An option given now differs from the run's.
    """
    meta = _read_meta(out) if out.is_dir() else {}
    if not meta:
        raise no_run_to_resume(out)
    missing = [field for field in ("backbone", "data") if field not in meta]
    if missing:
        raise no_run_to_resume(
            out, f"its {META_FILE} lacks the field {missing[0]!r} that transferkit train writes"
        )
    saved = {k: meta.get(k, default) for k, default in TRAIN_DEFAULTS.items()}
    given = _given(args)
    conflicts = [
        f"{_flag(k)} {v} (the run has {'the default' if saved[k] is None else saved[k]})"
        for k, v in given.items()
        if v != saved[k]
    ]
    if conflicts:
        raise UsageError(
            _PROG,
            f"--resume continues {out} with the options it started with, but {'; '.join(conflicts)}: a "
            "changed run would not end as the original would. Drop those options, or start a new run "
            "with another --out (or --overwrite)",
        )
    return saved


def has_checkpoint(out: Path) -> bool:
    """Whether the run in ``out`` has completed at least one epoch (its checkpoint exists)."""
    return (out / CHECKPOINT_DIR / "last.pt").is_file()
