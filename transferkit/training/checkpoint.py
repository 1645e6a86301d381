"""Checkpoints: atomic writes, exact resume, and the per-epoch rollback point.

A checkpoint (``last.pt``) holds everything a resumed run needs to continue as if it had never stopped:
the recipe's plan (`Plan`: a resumed run keeps the plan it started with, whatever the data or the device
would decide now), the model and freeze state, optimizer, scheduler, grad scaler, history, the best epoch
so far, the optimizer steps taken (``trainer.global_step``), the callbacks' states
(`Callbacks.state_dict`), every random number generator (torch, CUDA, Python, NumPy and the loader's own)
and the epoch count of a sampler that keeps one (`transferkit.data.EpochSampler`, from which each sample's
augmentation is seeded in whichever worker loads it). It is written to a temporary file, fsynced and
renamed, so a reader sees the old file or the new one, never half of one. It is read with
``torch.load(weights_only=True)`` (no code in the file ever runs) and checked against the model before
anything is changed, so a damaged or foreign file is a `CheckpointError` that leaves both the file and the
training state as they were.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write
from ..errors import CheckpointError
from ..models.weights import refused_objects
from .best import beside_model, whole_copy
from .phases import ProbeResult
from .recipe import Plan

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = [
    "CheckpointError",
    "atomic_save",
    "mutable_state",
    "read_checkpoint",
    "restore",
    "rng_state",
    "rollback_point",
    "set_rng_state",
]

CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "scaler", "freeze", "history", "best", "rng")
_MOVE_AWAY = "move it away (or delete it) to start afresh, or point checkpoint_dir= at this model's own run"


def atomic_save(obj: Any, path: Path) -> None:
    """Writes ``obj`` to ``last.pt.tmp``, fsyncs, renames it over ``path``: readers see old or new, never
    half, and Ctrl-C during the write lands after it (`transferkit.atomic.atomic_write`).

    Raises:
        OSError: The file could not be written (a full disk, a file-size limit, no permission); the
            message names ``path`` and what to do. ``path`` keeps its earlier content and the temp file
            is removed.
        FileExistsError: ``path`` is a symbolic link.
    """

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    try:
        atomic_write(path, save, temp_name=path.name + ".tmp")
    except FileExistsError:
        raise
    except BaseException as err:
        cause = _os_error(err)  # torch's writer reports a failed write as a RuntimeError ("unexpected pos")
        if cause is None:
            raise
        reason = cause.strerror or str(cause) or type(cause).__name__
        message = (
            f"could not write the checkpoint {path}: {reason}. Any earlier {path.name} there is intact "
            f"(nothing was half-written); free disk space (or raise the file-size limit), or point "
            f"checkpoint_dir= at a disk with room, then run again with resume=True."
        )
        raise (OSError(cause.errno, message) if cause.errno else OSError(message)) from err


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or what it was raised from or while handling), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def read_checkpoint(path: Path, model: TransferModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Loads ``path`` and checks that it fits ``model`` and ``optimizer``; changes nothing.

    Raises:
        CheckpointError: The file is damaged, is not a transferkit checkpoint, or was written for another
            model (the message says which one) or another optimizer layout.

    Examples:
        >>> ckpt = read_checkpoint(Path("runs/a/last.pt"), model, trainer.optimizer)  # doctest: +SKIP
        >>> ckpt["epoch"]
        4
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not refused_objects(err, path):  # bytes that are no pickle: damage, not a foreign object
            raise CheckpointError(
                f"cannot resume from {path}: the file is truncated or damaged (not a checkpoint's bytes). "
                f"The file was left as it is; {_MOVE_AWAY}."
            ) from None
        # torch's own message advises turning weights_only off, which would run whatever code the file holds
        raise CheckpointError(
            f"cannot resume from {path}: it holds objects other than tensors and plain data, which a "
            f"transferkit checkpoint never does (nothing in it was run). The file was left as it is; "
            f"{_MOVE_AWAY}."
        ) from None
    except Exception as err:  # random bytes fail deep in the unpickler (IndexError, KeyError, EOFError, ...)
        raise CheckpointError(
            f"cannot resume from {path}: the file is truncated or damaged ({type(err).__name__}). "
            f"The file was left as it is; {_MOVE_AWAY}."
        ) from None
    missing = (
        [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS)
    )
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it is not a transferkit Trainer checkpoint (it has no "
            f"{', '.join(missing)}). "
            f"The file was left as it is; {_MOVE_AWAY}."
        )
    wrong = [key for key, ok in _ENTRY_CHECKS.items() if key in ckpt and not ok(ckpt[key])]
    if wrong:
        entries = f"{', '.join(wrong)} {'entry is' if len(wrong) == 1 else 'entries are'}"
        raise CheckpointError(
            f"cannot resume from {path}: its {entries} not what a transferkit Trainer writes (the file is "
            f"damaged or was made by other code). The file was left as it is; {_MOVE_AWAY}."
        )
    _check_fits(path, ckpt, model, optimizer)
    for entry in (e for e in (ckpt["best"], ckpt.get("probe")) if isinstance(e, dict)):
        try:  # the best epoch's and the probe's weights, stored beside the model's (`beside_model`)
            entry["state"] = whole_copy(entry.get("state"), ckpt["model"])
        except ValueError as err:
            raise CheckpointError(
                f"cannot resume from {path}: {err} (the file is damaged or was made by other code). The "
                f"file was left as it is; {_MOVE_AWAY}."
            ) from None
    return ckpt


def _is_optimizer_state(value: Any) -> bool:
    groups = value.get("param_groups") if isinstance(value, dict) else None
    return isinstance(groups, list) and all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    )


# What each entry of a checkpoint is when the Trainer wrote it; anything else is refused before use.
_ENTRY_CHECKS = {
    "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "model": lambda v: isinstance(v, dict) and all(isinstance(t, Tensor) for t in v.values()),
    "optimizer": _is_optimizer_state,
    "scheduler": lambda v: isinstance(v, dict),
    "scaler": lambda v: isinstance(v, dict),
    "freeze": lambda v: isinstance(v, dict),
    "history": lambda v: isinstance(v, list) and all(isinstance(row, dict) for row in v),
    "best": lambda v: isinstance(v, dict),
    "rng": lambda v: isinstance(v, dict) and {"torch", "cuda", "python", "numpy", "loader"} <= set(v),
    # written since callbacks have state (older checkpoints lack both; they resume all the same)
    "global_step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "callbacks": lambda v: (
        isinstance(v, list)
        and all(
            e is None or isinstance(e, dict) and isinstance(e.get("name"), str) and "state" in e for e in v
        )
    ),
    "plan": lambda v: v is None or Plan.is_plan_dict(v),  # since the plan is kept (older checkpoints lack it)
}


def _check_fits(
    path: Path, ckpt: dict[str, Any], model: TransferModel, optimizer: torch.optim.Optimizer
) -> None:
    """Raise a short `CheckpointError` unless the saved weights and optimizer match this run's."""
    own = model.state_dict()
    saved = ckpt["model"]
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    clashes = [k for k in own if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or clashes:
        details = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in _named(missing, unexpected, clashes) if v]
        raise CheckpointError(
            f"cannot resume from {path}: it was written for another model ({_describe(ckpt.get('config'))}); "
            f"this one is {_describe(model.config)}. Weights: {'; '.join(details)}. The file was left as it "
            f"is; {_MOVE_AWAY}."
        )
    saved_groups = [len(g["params"]) for g in ckpt["optimizer"].get("param_groups", [])]
    own_groups = [len(g["params"]) for g in optimizer.param_groups]
    if saved_groups != own_groups:
        raise CheckpointError(
            f"cannot resume from {path}: its optimizer has {len(saved_groups)} parameter groups of sizes "
            f"{saved_groups[:6]}..., this run's {len(own_groups)} of sizes {own_groups[:6]}... (another "
            f"optimizer, layer_decay or model). The file was left as it is; {_MOVE_AWAY}."
        )


def _named(missing: list[str], unexpected: list[str], clashes: list[str]) -> list[tuple[str, list[str]]]:
    return [("missing", missing), ("unexpected", unexpected), ("with other shapes", clashes)]


def _describe(config: Mapping[str, Any] | None) -> str:
    if not isinstance(config, Mapping):
        return "a model of unknown configuration"
    parts = [f"{k}={config[k]!r}" for k in ("backbone", "neck", "head", "num_classes") if k in config]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- RNG
def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The generators that shuffle ``loader`` and seed its workers, each once."""
    found = [getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)]
    unique = {id(g): g for g in found if isinstance(g, torch.Generator)}
    return list(unique.values())


def rng_state(loader: Any) -> dict[str, Any]:
    """Every random number generator a training epoch draws from, and the sampler's state, as plain data."""
    state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())  # the legacy tuple
    kind, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "loader": [g.get_state() for g in _loader_generators(loader)],
        "sampler": _sampler_state(loader),
    }


def _sampler_state(loader: Any) -> dict[str, Any] | None:
    """The state of a sampler that has one (`transferkit.data.EpochSampler`: its epoch count), else None."""
    sampler = getattr(loader, "sampler", None)
    state = getattr(sampler, "state_dict", None)
    return state() if callable(state) else None


def set_rng_state(state: dict[str, Any], loader: Any) -> None:
    """Restores what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    for generator, saved in zip(_loader_generators(loader), state["loader"], strict=False):
        generator.set_state(saved)
    sampler = getattr(loader, "sampler", None)
    if state.get("sampler") is not None and callable(getattr(sampler, "load_state_dict", None)):
        sampler.load_state_dict(state["sampler"])  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ rollback
@contextlib.contextmanager
def rollback_point(model: TransferModel, directory: str | os.PathLike[str] | None) -> Iterator[Any]:
    """An anonymous temporary file holding the state an epoch can change (`mutable_state`).

    A failed epoch rolls back to it. It lives in a file, not in memory, so training holds no second
    copy of the trainable weights (for a resnet18 that is 45 MB of peak memory, more than all the
    activations of a frozen backbone's forward). The tensors' bytes are written as they are, with their
    names, shapes and dtypes kept beside the file: about 10 ms for a resnet18 (``torch.save`` takes three
    to eight times as long, to pack what this file never needs).
    """
    state = mutable_state(model)
    with tempfile.TemporaryFile(prefix="transferkit-rollback-", dir=directory) as f:
        for tensor in state.values():
            f.write(_raw_bytes(tensor.detach().cpu()).data)
        yield f, {name: (tensor.shape, tensor.dtype) for name, tensor in state.items()}


def _raw_bytes(tensor: Tensor) -> np.ndarray:
    """``tensor``'s bytes in memory order, as a uint8 array (any dtype, bfloat16 included)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def restore(model: TransferModel, point: Any, device: torch.device) -> None:
    """Loads the state saved by `rollback_point` back into ``model``."""
    f, layout = point
    f.seek(0)
    state = {}
    for name, (shape, dtype) in layout.items():
        raw = torch.empty(shape.numel() * dtype.itemsize, dtype=torch.uint8)
        f.readinto(raw.numpy().data)
        state[name] = raw.view(dtype).reshape(shape).to(device)
    model.load_state_dict(state, strict=False)


def mutable_state(model: TransferModel) -> dict[str, Tensor]:
    """The state an epoch can change: trainable parameters and the buffers of modules in training mode.

    Frozen blocks never change (their norm layers stay in eval mode), so under ``freeze("all")`` this
    is the neck and head only, not the whole model. The tensors are the model's own (not copies).
    """
    model.train()
    keys = {name for name, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if module.training:
            skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
            keys.update(f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False))
            keys.difference_update(f"{prefix}.{b}" if prefix else b for b in skip)
    return {k: v for k, v in model.state_dict().items() if k in keys}


def seed_everything(seed: int) -> None:
    """Seeds torch, Python's ``random`` and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# ------------------------------------------------------------------------------------ the Trainer's
def save_checkpoint(trainer: Any, path: Path, train_loader: Any) -> None:
    """Writes ``trainer``'s whole state after its current epoch to ``path``, atomically."""
    model = trainer.model.state_dict()
    best, probe = trainer.best.state_dict(trainer.epoch), getattr(trainer, "probe", None)
    best["state"] = beside_model(best["state"], model)
    if probe is not None:
        probe = {**probe.state_dict(), "state": beside_model(probe.state, model)}
    state = {
        "epoch": trainer.epoch,
        "config": trainer.model.config,
        "model": model,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "freeze": trainer.model.freeze_state(),
        "history": trainer.history,
        "best": best,
        "rng": rng_state(train_loader),
        "global_step": trainer.global_step,
        "callbacks": trainer.callbacks.state_dict(),
        "probe": probe,
        "plan": trainer.plan.as_dict() if trainer.plan is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state, path)


def resumable(trainer: Any, path: Path | None) -> dict[str, Any] | None:
    """The checkpoint at ``path``, read and checked (`read_checkpoint`), where ``trainer`` resumes and
    there is one; else None.

    Raises:
        CheckpointError: As `read_checkpoint`, and for a checkpoint of a run with another ``recipe``
            (``"auto"`` resumes a run that it planned as a plain ``"finetune"``).
    """
    if not trainer.resume or path is None or not path.exists():
        return None
    ckpt = read_checkpoint(path, trainer.model, trainer.optimizer)
    ran = ckpt["plan"]["recipe"] if ckpt.get("plan") is not None else trainer.recipe
    if ran != trainer.recipe and (trainer.recipe, ran) != ("auto", "finetune"):
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a run with recipe={ran!r}, and this Trainer has "
            f"recipe={trainer.recipe!r}. Resume with recipe={ran!r}, or {_MOVE_AWAY}."
        )
    return ckpt


def resume_from(trainer: Any, ckpt: dict[str, Any], path: Path, train_loader: Any) -> int:
    """Restores ``trainer`` from ``ckpt``, read from ``path`` by `read_checkpoint`; returns the next epoch."""
    trainer.model.load_freeze_state(ckpt["freeze"])
    trainer.model.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.history = ckpt["history"]
    trainer.best.load_state_dict(ckpt["best"], trainer.model, ckpt["epoch"])
    set_rng_state(ckpt["rng"], train_loader)
    trainer.global_step = ckpt.get("global_step", _steps_taken(ckpt["scheduler"]))
    trainer.callbacks.load_state_dict(ckpt.get("callbacks"), f"the checkpoint {path}")
    trainer.probe = ProbeResult.from_state(ckpt.get("probe"))
    return ckpt["epoch"] + 1


def _steps_taken(scheduler: dict[str, Any]) -> int:
    """Optimizer steps before a checkpoint that does not count them: its scheduler's count (the Trainer's
    schedulers step once per optimizer step), or 0 for a scheduler that keeps none."""
    steps = scheduler.get("last_epoch")
    return steps if isinstance(steps, int) and steps >= 0 else 0
