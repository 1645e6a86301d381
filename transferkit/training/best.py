"""The best epoch so far: which one, its score, optionally its weights, and early stopping's patience.

A non-finite score (a diverged epoch's NaN loss) is never the best: NaN compares false with everything, so
taken once it would stay "best" for good, and ``restore_best`` would end the run on a diverged epoch.

A checkpoint stores such kept copies (the best epoch's weights, a recipe's probe) beside its own model
weights: only the entries that differ from them (`beside_model`, `whole_copy`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BestEpoch", "beside_model", "check_monitor", "cpu_copy", "whole_copy"]


def cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detached copy of a state_dict on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class BestEpoch:
    """Tracks ``monitor`` over the history: minimised for keys ending in ``loss``, else maximised.

    Epochs whose score is NaN or infinite are passed over: they never become the best, and count as epochs
    without improvement for ``patience``.

    Args:
        monitor: The history key, e.g. ``"val_loss"`` or ``"val_acc"``.
        keep_weights: Keep a CPU copy of the best epoch's weights (``restore_best``).
        patience: Early stopping: epochs without improvement before training stops (None: never).

    Examples:
        >>> best = BestEpoch("val_acc", keep_weights=False)
        >>> for row in ({"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.4}):
        ...     best.update(row, model)
        >>> best.epoch, best.score
        (0, 0.5)
    """

    def __init__(self, monitor: str, keep_weights: bool, patience: int | None = None) -> None:
        self.monitor, self.keep_weights, self.patience = monitor, keep_weights, patience
        self.minimise = monitor.endswith("loss")
        self.score: float | None = None
        self.epoch: int | None = None
        self.weights: dict[str, Tensor] | None = None

    def update(self, row: dict[str, Any], model: nn.Module) -> None:
        """Takes an epoch's history row; copies the model's weights when it is the best so far."""
        if self.monitor not in row:
            raise ValueError(f"monitor={self.monitor!r} is not in the history; choose one of {sorted(row)}")
        score = row[self.monitor]
        if not math.isfinite(score):
            return
        if self.score is None or (score < self.score if self.minimise else score > self.score):
            self.score, self.epoch = score, row["epoch"]
            self.weights = cpu_copy(model.state_dict()) if self.keep_weights else None

    def restore(self, model: nn.Module) -> None:
        """Loads the kept best weights into ``model`` (nothing when none were kept)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def out_of_patience(self, epoch: int) -> bool:
        """Whether ``patience`` epochs have passed without improvement before ``epoch`` (with no finite score
        yet, every epoch so far counts)."""
        best = -1 if self.epoch is None else self.epoch
        return self.patience is not None and epoch - 1 - best >= self.patience

    def state_dict(self, current_epoch: int) -> dict[str, Any]:
        """For a checkpoint; the weights are left out when they are the model's own (the current epoch)."""
        own = self.epoch == current_epoch
        return {"score": self.score, "epoch": self.epoch, "state": None if own else self.weights}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module, current_epoch: int) -> None:
        """Restores what `state_dict` returned, after the model's weights were restored."""
        self.score, self.epoch = state.get("score"), state.get("epoch")
        self.weights = state.get("state") if self.keep_weights else None
        if self.keep_weights and self.epoch == current_epoch:
            self.weights = cpu_copy(model.state_dict())


def check_monitor(monitor: str, *, has_val: bool) -> None:
    """Refuse a ``val_*`` monitor without a validation loader (`Trainer.fit`).

    Raises:
        ValueError: ``monitor`` starts with ``val_`` and ``has_val`` is False.
    """
    if monitor.startswith("val_") and not has_val:
        raise ValueError(f"monitor={monitor!r} needs a validation loader; pass {{'train': ..., 'val': ...}}")


def beside_model(kept: dict[str, Tensor] | None, model: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """A kept copy of weights (the best epoch's, the probe's) as a checkpoint stores it: the names of the
    entries equal to the model's own in the same checkpoint, and the others. Frozen blocks are the same
    in every copy, so a checkpoint holds them once, not once per copy.

    Examples:
        >>> model = {"frozen": torch.zeros(2), "head": torch.ones(2)}
        >>> stored = beside_model({"frozen": torch.zeros(2), "head": torch.zeros(2)}, model)
        >>> stored["unchanged"], list(stored["changed"])
        (['frozen'], ['head'])
    """
    if kept is None:
        return None
    same = {k for k, v in kept.items() if k in model and _identical(v, model[k])}
    return {"unchanged": sorted(same), "changed": {k: v for k, v in kept.items() if k not in same}}


def _identical(kept: Tensor, own: Tensor) -> bool:
    """Same shape, dtype and bits: -0.0 is not 0.0, and a NaN anywhere makes the copy stored as it is."""
    if kept.shape != own.shape or kept.dtype != own.dtype:
        return False
    own = own.detach().to(kept.device)
    if kept.is_floating_point() and not torch.equal(kept.signbit(), own.signbit()):
        return False
    return torch.equal(kept, own)


def whole_copy(stored: Any, model: Mapping[str, Tensor]) -> Any:
    """The kept copy `beside_model` stored, whole again from the checkpoint's model weights (a
    checkpoint written before copies were stored so: as it is).

    Raises:
        ValueError: The stored copy is not what `beside_model` returns, or names an entry equal to the
            model's that is not among the model's weights.
    """
    if not (isinstance(stored, dict) and set(stored) == {"unchanged", "changed"}):
        return stored
    unchanged, changed = stored["unchanged"], stored["changed"]
    if not (
        isinstance(unchanged, list)
        and all(isinstance(k, str) for k in unchanged)
        and isinstance(changed, dict)
        and all(isinstance(v, Tensor) for v in changed.values())
    ):
        raise ValueError("a kept copy of the weights is neither names nor tensors")
    missing = [k for k in unchanged if k not in model]
    if missing:
        raise ValueError(f"a kept copy of the weights names {missing[0]!r}, which its model weights lack")
    return {**{k: model[k] for k in unchanged}, **changed}
