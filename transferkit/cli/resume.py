"""A run folder that exists already: ``train --resume`` continues it, ``--overwrite`` replaces it.

``transferkit train`` writes its arguments into the run folder's ``transferkit.json`` before training
starts, and the Trainer checkpoints into the folder after every epoch, so ``--resume --out RUN`` needs
nothing else: it rebuilds the same run from the saved arguments and continues after the last completed
epoch, ending with the weights the uninterrupted run would have. Options given with ``--resume`` must
agree with the saved ones (a changed run would not end as the original would); only ``--device`` may
differ. Without either flag, an ``--out`` folder that holds anything is refused.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from .options import FreezeSpec, UsageError
from .runs import CHECKPOINT_DIR, META_FILE, _read_meta

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
    "lr": None,  # the Trainer's default: 1e-3, or 1e-2 with under 5 images per class
    "batch_size": 32,
    "image_size": None,
    "seed": 0,
    "augment": "light",
    "mixup": 0.0,
    "cutmix": 0.0,
    "label_smoothing": 0.0,
    "log": "csv",
}
_PROG = "transferkit train"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a transferkit run (``transferkit.json``) or a saved model."""
    saved_model = (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return (path / META_FILE).is_file() or saved_model


def prepare_new_run(out: Path, *, overwrite: bool) -> None:
    """Make sure ``out`` can take a new run: absent or empty, or replaced with ``overwrite``.

    Raises:
        FileExistsError: ``out`` is a file, holds something and ``overwrite`` is False, or holds
            something that is not a run folder (``--overwrite`` deletes only runs).
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        what = "a run" if is_run_folder(out) else "files"
        raise FileExistsError(
            f"--out {out} already holds {what}; pass --resume to continue an interrupted run there, "
            "--overwrite to replace it, or choose another --out"
        )
    if not is_run_folder(out):
        names = sorted(p.name for p in out.iterdir())[:3]
        raise FileExistsError(
            f"--overwrite only replaces a transferkit run folder, and {out} is not one (it holds "
            f"{', '.join(names)}, ...); empty it yourself or choose another --out"
        )
    shutil.rmtree(out)


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


def resumed_arguments(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The saved options of the run in ``out``, checked against those given again with ``--resume``.

    Raises:
        FileNotFoundError: ``out`` holds no run started by ``transferkit train``.
        UsageError: An option given now differs from the run's.
    """
    meta = _read_meta(out) if out.is_dir() else {}
    if "backbone" not in meta or "data" not in meta:
        raise FileNotFoundError(
            f"--resume: {out} holds no run started by transferkit train (no {META_FILE} with its "
            "arguments); start one without --resume"
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
