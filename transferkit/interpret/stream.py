"""The one streamed pass every interpretation makes, and what its drawings share.

`stream` runs a model once over a loader in eval mode without gradients, through the Trainer's own
`transferkit.training.Trainer.stepper` (device, precision, memory format), and hands each batch's float
outputs and targets to the caller, who keeps only what it needs (scalars per sample, metric states).
Nothing of a batch outlives its ``update``.

`Reread` is how a drawing gets its few samples back: by index from the loader's dataset, in the order
the pass saw them, so no image, mask or box list is kept for the whole set.

Examples:
    >>> seen = []  # doctest: +SKIP
    >>> def split(batch, task, where):  # doctest: +SKIP
    ...     return check_pair(batch, "classes", where)
    >>> trainer = stream(model, loader, lambda out, y: seen.append(len(y)), split=split)  # doctest: +SKIP
    >>> sum(seen)  # the images of the loader  # doctest: +SKIP
    20
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, SequentialSampler, Subset

from ..models.model import TransferModel
from ..tasks import Task
from ..training import Trainer
from ..training.progress import progress as progress_bar

__all__ = ["Reread", "check_pair", "rerun", "sample_paths", "stream"]

Update = Callable[[Any, Any], None]
Split = Callable[[Any, Task, str], tuple[Any, Any]]


def check_pair(batch: Any, what: str, where: str) -> tuple[Any, Any]:
    """A batch's ``(inputs, targets)``, or a ValueError saying that interpret() needs the true ``what``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"{where} is not an (inputs, targets) pair; interpret() needs the true {what}")
    return batch[0], batch[1]


def stream(
    model: TransferModel,
    loader: Iterable[Any],
    update: Update,
    *,
    split: Split,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> Trainer:
    """Run ``model`` over ``loader`` once and call ``update(outputs, targets)`` per batch.

    Args:
        model: The model; it is put in eval mode for the pass and given back in the mode it had.
        loader: ``(inputs, targets)`` batches.
        update: Takes the batch's outputs (float32, `transferkit.tasks.Task.float_outputs`) and its targets,
            both on the pass's device.
        split: ``split(batch, task, where)`` -> ``(inputs, targets)``, checked (``where`` names the batch).
        device: As for `transferkit.Trainer`.
        precision: As for `transferkit.Trainer`.
        progress: A bar over the batches where bars render (`transferkit.training.progress`).

    Returns:
        The `Trainer` whose step ran the pass (its ``device`` and ``stepper`` serve a later re-run).

    Raises:
        ValueError: The loader yielded no batch.
    """
    trainer = Trainer(model, device=device, precision=precision, progress=False)
    step, task = trainer.stepper, trainer.task
    batches = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index, batch in enumerate(progress_bar(loader, "interpret", not progress)):
                inputs, targets = split(batch, task, f"interpret batch {index + 1}")
                inputs, targets = step.to_device(inputs, targets)
                update(task.float_outputs(step.outputs(model, inputs)), targets)
                batches += 1
    finally:
        model.train(was_training)
    if not batches:
        raise ValueError("interpret() got an empty loader; pass a loader with at least one batch")
    return trainer


def rerun(trainer: Trainer, model: TransferModel, inputs: Any) -> Any:
    """The model's float outputs for one batch, with the pass's device and precision, in eval mode."""
    step, task = trainer.stepper, trainer.task
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return task.float_outputs(step.outputs(model, step.inputs_to_device(task.as_batch(inputs))))
    finally:
        model.train(was_training)


def sample_paths(loader: Iterable[Any], count: int) -> list[str] | None:
    """Each sample's file in loader order, when a sequential DataLoader reads a dataset with ``samples``."""
    dataset, indices = _in_order(loader)
    if dataset is None:
        return None
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, list) or not samples or not isinstance(samples[0], tuple):
        return None
    paths = [str(samples[i][0]) for i in (range(len(samples)) if indices is None else indices)]
    return paths if len(paths) == count else None


def _in_order(loader: Iterable[Any]) -> tuple[Any, list[int] | None]:
    """``(dataset, indices)`` of a DataLoader that reads its dataset in order (a `Subset`'s indices
    when it reads one, else None); ``(None, None)`` for anything else."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler):
        return None, None
    if isinstance(loader.dataset, Subset):
        return loader.dataset.dataset, list(loader.dataset.indices)
    return loader.dataset, None


class Reread:
    """The samples of a pass, read again by their position in the loader's order.

    Args:
        loader: The loader of the pass; only a `DataLoader` that reads its dataset in order can give
            samples back (a shuffled one cannot say which sample came where).
        count: The samples the pass saw.
    """

    def __init__(self, loader: Iterable[Any], count: int) -> None:
        dataset, indices = _in_order(loader)
        self.dataset, self.count = dataset, count
        self.indices = indices if indices is not None else list(range(count))
        self.collate = loader.collate_fn if isinstance(loader, DataLoader) else None
        if dataset is not None and len(self.indices) != count:
            self.dataset = None  # a dataset longer than what the pass saw (drop_last): no sure mapping

    def batch(self, positions: Sequence[int], what: str) -> tuple[Any, Any]:
        """The samples at ``positions`` (loader order), collated as the loader collates them.

        Raises:
            ValueError: The loader was not a `DataLoader` reading its dataset in order, or a position is
                outside the pass.
        """
        if self.dataset is None or self.collate is None:
            raise ValueError(
                f"{what} reads its samples again from the loader's dataset, by index; pass interpret() a "
                "DataLoader that reads its dataset in order (shuffle=False, drop_last=False)"
            )
        bad = [p for p in positions if not 0 <= p < self.count]
        if bad:
            raise ValueError(f"{what}: sample {bad[0]} is outside the {self.count} samples of the pass")
        if not positions:
            raise ValueError(f"{what} needs at least one sample to draw")
        return self.collate([self.dataset[self.indices[p]] for p in positions])
