"""Non-finite values in evaluation: in the inputs (bad data, an error) or in the results (a diverged model).

One NaN pixel makes every loss and metric it reaches NaN, epoch after epoch, and a NaN compares false with
everything, so it would silently decide which epoch is "best". Evaluation therefore refuses a batch whose
inputs hold a NaN or an infinity, naming the batch and its samples, before they reach the model; the check
runs where the batch still is (on the CPU for a DataLoader), so it costs no device sync. A non-finite loss
or output from finite inputs means the model has diverged: `warn_if_not_finite` says so, naming the first
such batch, and `transferkit.training.best.BestEpoch` never takes that epoch as the best.

Examples:
    >>> images = torch.zeros(4, 3, 8, 8)
    >>> images[2, 0, 1, 1] = float("nan")
    >>> check_finite_inputs(images, "evaluation batch 3")
    Traceback (most recent call last):
    ValueError: the inputs at evaluation batch 3 hold NaN or infinite values in sample [2] of the batch ...
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

__all__ = ["check_finite_inputs", "not_finite", "warn_if_not_finite"]


def check_finite_inputs(inputs: Any, where: str, loader: Any = None, step: int = 0) -> None:
    """Raise ``ValueError`` naming the samples of the batch at ``where`` whose inputs are not all finite.

    Args:
        inputs: The batch's float inputs ``[N, ...]``, or tensors ``[N, ...]`` in tuples, lists and
            dataclasses (a cached batch's prefix outputs).
        where: The batch, for the message (``"epoch 2, evaluation batch 3"``).
        loader: The loader the batch came from; an unshuffled DataLoader lets the message name the dataset
            indices too.
        step: Index (from 0) of the batch in ``loader``.
    """
    bad: Tensor | None = None
    for tensor in _tensors(inputs):
        if tensor.is_floating_point():
            rows = ~tensor.reshape(len(tensor), -1).isfinite().all(1)
            bad = rows if bad is None else bad | rows
    if bad is None or not bad.any():
        return
    samples = bad.nonzero().flatten().tolist()
    shown = f"{samples[:10]}{' ...' if len(samples) > 10 else ''}"
    raise ValueError(
        f"the inputs at {where} hold NaN or infinite values in sample{'s' if len(samples) > 1 else ''} "
        f"{shown} of the batch (counted from 0){_dataset_indices(loader, step, samples)}; every loss and "
        "metric computed over them would be NaN. Fix or drop those images (a corrupt file, or a transform "
        "that divides by a zero standard deviation, gives such values), then run again."
    )


def _tensors(inputs: Any) -> Iterator[Tensor]:
    """The tensors in ``inputs``: itself, or those held in its tuples, lists and dataclass fields."""
    if isinstance(inputs, Tensor):
        yield inputs
    elif isinstance(inputs, (tuple, list)):
        for item in inputs:
            yield from _tensors(item)
    elif dataclasses.is_dataclass(inputs) and not isinstance(inputs, type):
        for item in dataclasses.fields(inputs):
            yield from _tensors(getattr(inputs, item.name))


def not_finite(value: Any) -> Tensor:
    """Whether any float tensor in ``value`` (a tensor, or dicts and lists of them) holds a NaN or an
    infinity: a bool tensor on their device, to be read later with the other results (no sync per batch)."""
    if isinstance(value, Tensor):
        if value.is_floating_point():
            return ~value.isfinite().all()
        return torch.zeros((), dtype=torch.bool, device=value.device)
    flag = torch.zeros((), dtype=torch.bool)  # a CPU scalar combines with a flag on any device
    parts = (
        value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    )
    for part in parts:
        flag = flag | not_finite(part)
    return flag


def warn_if_not_finite(results: Mapping[str, float], flags: list[Tensor], where: str) -> None:
    """Warn when an evaluation's results are not all finite although its inputs were.

    Args:
        results: The loss and metrics.
        flags: Per batch, `not_finite` of its loss and outputs.
        where: What was evaluated, e.g. ``"the validation at epoch 2"``.
    """
    bad = sorted(name for name, value in results.items() if not math.isfinite(float(value)))
    if not bad:
        return
    batches = torch.stack([flag.cpu() for flag in flags]).nonzero().flatten().tolist() if flags else []
    first = f", first at evaluation batch {batches[0] + 1}" if batches else ""
    warnings.warn(
        f"{where} gave non-finite {', '.join(bad)}{first}, from finite inputs: the model has diverged. An "
        "epoch whose validation is not finite is never the best one (restore_best and early stopping pass "
        "it over). Lower lr, set clip_grad_norm, or train with precision='fp32'.",
        RuntimeWarning,
        stacklevel=3,
    )


def _dataset_indices(loader: Any, step: int, samples: list[int]) -> str:
    """``, dataset indices [5]`` for an unshuffled DataLoader with a fixed batch size, else nothing."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler):
        return ""
    if not loader.batch_size:
        return ""
    first = step * loader.batch_size
    return f", dataset {'indices' if len(samples) > 1 else 'index'} {[first + i for i in samples[:10]]}"
