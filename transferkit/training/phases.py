"""The phases of a recipe (`transferkit.training.recipe`) as `Trainer.fit` runs them.

The probe phase is a Trainer of its own over the same model (the backbone frozen, its features cached
where the loaders allow it, no checkpoints or callbacks); what it leaves is a `ProbeResult`: its history
rows, its score on the validation data and the model's state as it ended (with validation data the
backbone's too), so that the model can end with the probe when it scored better than the fine-tuned
model.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .best import BestEpoch, cpu_copy
from .cacheable import check_cacheable
from .recipe import Phase, Plan, plan_recipe

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = [
    "ProbeResult",
    "can_cache",
    "finetune_start",
    "keep_the_better",
    "run_probe",
    "set_phase_freeze",
    "soften_head",
    "start_plan",
]


@dataclass
class ProbeResult:
    """What the probe phase left: its history rows, its validation score (None without validation data)
    and a CPU copy of the model's state as the probe ended. With validation data that is the whole
    state, the backbone's included: the fine-tune phase then changes the top blocks (and their norm
    statistics), and ending with the probe puts them back. Without, it is the part outside the backbone
    (what the probe trained)."""

    rows: list[dict[str, Any]]
    score: float | None
    state: dict[str, Tensor]

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint."""
        return {"rows": self.rows, "score": self.score, "state": self.state}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> ProbeResult | None:
        """The inverse of `state_dict` (None stays None)."""
        return None if state is None else cls(state["rows"], state["score"], state["state"])


def can_cache(train: Any, world_size: int, task: Any) -> bool:
    """Whether a probe on ``train`` can cache the backbone's features: one process, a task that caches,
    and a map-style loader without random torchvision transforms."""
    if world_size > 1 or not task.cacheable:
        return False
    try:
        check_cacheable(train, "train")  # the check cache_features=True itself makes
    except (TypeError, ValueError):
        return False
    return True


def set_phase_freeze(model: TransferModel, phase: Phase) -> None:
    """Freezes ``model`` for ``phase`` as the recipe's choice, not the user's (None blocks: as it is)."""
    if phase.blocks is None:
        return
    if phase.blocks == 0:
        model.freeze("all")
    else:
        model.freeze("last_n", n=phase.blocks)
    model._freeze_chosen = False  # the recipe's, not the user's: a later fit decides again


def run_probe(trainer: Any, train: Any, val: Any, phase: Phase, *, converge: bool = False) -> ProbeResult:
    """Trains the head of ``trainer.model`` on its frozen backbone for ``phase`` with a Trainer of its
    own (the options of ``trainer``, the probe's epochs and rate, no callbacks or checkpoints).

    ``converge``: the probe is the start of a fine-tune phase. It then ends trained for all its epochs,
    not at the epoch that scored best on the validation data (``restore_best``): on a few validation
    images the loss can be lowest after 3 epochs of 40, and the fine-tune phase from that head ended up
    to 22 points lower on the test set (``benchmarks/README.md``). Its score is then its last epoch's;
    otherwise its best epoch's.
    """
    model = trainer.model
    set_phase_freeze(model, phase)
    options = {**trainer.options, "restore_best": False} if converge else trainer.options
    probe = type(trainer)(
        model, epochs=phase.epochs, lr=phase.lr, recipe="finetune", cache_features=phase.cached,
        progress=False, **options,
    )  # fmt: skip
    loaders = {"train": train, "val": val} if val is not None else {"train": train}
    rows = [{**row, "phase": "probe"} for row in probe.fit(loaders)]
    state = cpu_copy(model.state_dict())  # with validation data the model may end with it: all of it
    if val is None:  # the fine-tune phase's start, for the record: what the probe trained
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    score = None
    if val is not None:
        score = rows[-1].get(probe.best.monitor) if converge else probe.best.score
    return ProbeResult(rows, score, state)


def soften_head(model: TransferModel, temperature: float) -> None:
    """Divides ``model``'s logits by ``temperature``: the head's last linear layer (weight and bias) is
    scaled by ``1 / temperature`` in place. The predicted classes stay the same; the probabilities soften.

    Examples:
        >>> soften_head(model, 10.0)  # logits / 10
    """
    if temperature == 1:
        return
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    if not last:  # a custom head: said, since the plan line promised the division
        warnings.warn(
            f"the head {type(model.head).__name__} has no nn.Linear layer whose logits could be divided by "
            f"{temperature:g}; the fine-tune phase starts from the probe's head as it is",
            UserWarning,
            stacklevel=3,
        )
        return
    with torch.no_grad():
        for param in last[-1].parameters():
            param.div_(temperature)


def keep_the_better(
    model: TransferModel,
    plan: Plan | None,
    probe: ProbeResult | None,
    best: BestEpoch,
    history: list[dict[str, Any]],
) -> str | None:
    """With ``plan.select``: ends ``model`` with the probe's weights where the probe did better on the
    validation data than the fine-tuned model (as it ends: ``best``'s epoch under ``restore_best``, else
    the last); returns the phase kept (None: no choice made).

    Better is more validation images right (``val_acc``); a tie, which a few images make common, keeps
    the fine-tuned model (without ``val_acc`` on either side, ``best.monitor`` decides). The losses are
    not measured alike: the converged probe is sure of every answer and the fine-tuned model starts from
    its logits divided by 10, so on 3-shot digits the probe's loss was the lower where the fine-tuned
    model had more validation images right and was 15-19 points better on the test set, and ties broken
    by the lower loss kept the probe where the fine-tuned model was 3-10 points better (scenes-10, and
    textures-5 with a sixth of the blocks; ``benchmarks/README.md``).
    """
    if plan is None or not plan.select or probe is None or not probe.rows:
        return None
    rows = [r for r in history if r.get("phase") == "finetune"]
    if best.keep_weights and best.epoch is not None:
        rows = [r for r in rows if r["epoch"] == best.epoch]
    if not rows:
        return None
    probe_row, tuned_row = _standing(probe.rows[-1], best), _standing(rows[-1], best)
    if probe_row[0] == tuned_row[0] == -math.inf:  # no accuracy on either side: the monitor decides
        better = probe_row > tuned_row
    else:
        better = probe_row[0] > tuned_row[0]
    if better:
        model.load_state_dict({**model.state_dict(), **probe.state})
        set_phase_freeze(model, plan.phases[0])
    return "probe" if better else "finetune"


def _standing(row: dict[str, Any], best: BestEpoch) -> tuple[float, float]:
    """``(val_acc, monitor)`` of an epoch's row, both as higher-is-better; a missing or non-finite value
    is the worst."""

    def finite(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf

    score = finite(row.get(best.monitor))
    return finite(row.get("val_acc")), -score if best.minimise and score != -math.inf else score


def start_plan(trainer: Any, train: Any, val: Any, ckpt: dict[str, Any] | None) -> Phase | None:
    """Decides ``trainer.plan`` for this data (resuming from ``ckpt``: the plan the run started with, as
    the checkpoint keeps it), prints it, runs its probe phase (not when resuming: the checkpoint holds it)
    and freezes the model for the fine-tune phase, which it returns (None: the plan is the probe alone)."""
    model, lr = trainer.model, trainer.lr
    kept = ckpt.get("plan") if ckpt is not None else None  # None also for a checkpoint from before plans
    plan = trainer.plan = Plan.from_dict(kept) if kept is not None else plan_recipe(
        trainer.recipe, model, train, epochs=trainer.epochs, lr=lr, has_val=val is not None,
        cacheable=can_cache(train, trainer.world_size, trainer.task),
    )  # fmt: skip
    if trainer.show_progress and plan.recipe != "finetune":
        print(f"transferkit: {plan.describe(len(model.blocks))}", flush=True)
    probe, finetune = plan.phase("probe"), plan.phase("finetune")
    probed = _start_phases(trainer, train, val, probe, finetune, model.freeze_state(), ckpt is not None)
    if probed is not None:
        trainer.probe = probed
    return finetune


def _start_phases(
    trainer: Any,
    train: Any,
    val: Any,
    probe: Phase | None,
    finetune: Phase | None,
    freeze: dict[str, Any],
    resuming: bool,
) -> ProbeResult | None:
    """Runs the probe phase (not when resuming), softens its head for the fine-tune phase and freezes the
    model for that phase (the user's own ``freeze`` where the plan keeps it); returns the probe's result."""
    model, probed = trainer.model, None
    if probe is not None and not resuming:
        probed = run_probe(trainer, train, val, probe, converge=finetune is not None)
        if finetune is not None:
            soften_head(model, finetune.head_temperature)  # kept in the probe's state as it was
    if finetune is not None:
        if finetune.blocks is None and probe is not None:
            model.load_freeze_state(freeze)  # the user's own freeze, kept for the fine-tune phase
        set_phase_freeze(model, finetune)
    return probed


@contextlib.contextmanager
def finetune_start(trainer: Any, train: Any) -> Iterator[Callable[[], object] | None]:
    """Within the block, ``trainer.model`` is frozen as its recipe's fine-tune phase on ``train`` trains
    it (`Trainer.lr_find` measures the rate ``lr`` sets: that phase's); its freeze state is restored
    after. Yields what brings the model to where that phase starts, for the caller to run once it has
    saved the weights: the plan's probe trained and its logits softened (None for a plan without both
    phases: the phase starts from the model as it is).
    """
    model, lr = trainer.model, trainer.lr
    freeze, chosen = model.freeze_state(), getattr(model, "_freeze_chosen", False)
    cacheable = can_cache(train, trainer.world_size, trainer.task)
    plan = plan_recipe(trainer.recipe, model, train, epochs=1, lr=lr, has_val=False, cacheable=cacheable)
    probe, finetune = plan.phase("probe"), plan.phase("finetune")
    start = None
    if probe is not None and finetune is not None:
        start = functools.partial(_start_phases, trainer, train, None, probe, finetune, freeze, False)
    if finetune is not None:
        set_phase_freeze(model, finetune)
    try:
        yield start
    finally:
        model.load_freeze_state(freeze)
        model._freeze_chosen = chosen
