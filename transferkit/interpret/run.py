"""`interpret`: one streamed pass of any model over a loader, interpreted as its task reads it.

Each task's interpreter is found by the task's name in `INTERPRETERS`, as its pictures are in
`transferkit.viz.pictures.PICTURES`: nothing here asks which task a model has.

Examples:
    >>> sorted(INTERPRETERS)
    ['classification', 'detection', 'segmentation']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..models.model import TransferModel
from .classification import ClassificationInterpretation, interpret_classification
from .detection import DetectionInterpretation, interpret_detection
from .segmentation import SegmentationInterpretation, interpret_segmentation

__all__ = ["INTERPRETERS", "SUPPORTED_TASKS", "interpret"]

Interpretation = ClassificationInterpretation | SegmentationInterpretation | DetectionInterpretation

INTERPRETERS: dict[str, Callable[..., Interpretation]] = {
    "classification": interpret_classification,
    "segmentation": interpret_segmentation,
    "detection": interpret_detection,
}
"""Each task's interpreter by the task's name: ``f(model, loader, *, device, precision, progress, ...)``."""

SUPPORTED_TASKS = tuple(INTERPRETERS)
"""The model tasks `interpret` takes."""


def interpret(
    model: TransferModel,
    loader: Iterable[Any],
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    **options: Any,
) -> Any:
    """Run ``model`` once over ``loader`` (``(inputs, targets)`` batches, in eval mode, without gradients,
    with the Trainer's device and precision) and keep what explains its results, for its task:

    - classification: a `ClassificationInterpretation` (top losses, confusion, per-class scores,
      calibration);
    - segmentation: a `SegmentationInterpretation` (the images with the lowest IoU, per-class IoU);
    - detection: a `DetectionInterpretation` (per-class AP, the images with the most missed and false
      boxes; ``score_threshold=0.3`` and ``iou_threshold=0.5`` in ``options``).

    Only per-image scalars and metric states are kept, never images, masks, logits or box lists, so the
    memory does not grow with the images' size; drawings read their few images again from the loader's
    dataset.

    Args:
        model: A `TransferModel`; ``model.task`` picks the interpretation, ``model.classes`` names classes.
        loader: Batches in a fixed order; with a sequential DataLoader over a dataset that has ``samples``
            (the folder datasets of `transferkit.data`, also under a ``Subset``) each sample gets its path.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... as for `transferkit.Trainer`.
        precision: As for `transferkit.Trainer` (``"auto"``: bf16 / fp16 autocast on CUDA, fp32 elsewhere).
        progress: A bar over the batches where bars render (a terminal, a notebook); False shows none.
        **options: What the task's interpreter takes besides (detection: its thresholds).

    Returns:
        The interpretation of the model's task. Its type depends on ``model.task``, which a type checker
        cannot see: typed code that knows the task calls `interpret_classification`,
        `interpret_segmentation` or `interpret_detection`, which take the same arguments.

    Raises:
        ValueError: A task without an interpreter, targets that do not fit the task, or an empty loader.

    Examples:
        >>> interp = interpret(model, loaders["val"], device="cpu")  # doctest: +SKIP
        >>> len(interp), interp.confusion_matrix().shape  # doctest: +SKIP
        (20, torch.Size([2, 2]))
    """
    task = model.task
    if task not in INTERPRETERS:
        raise ValueError(
            f"interpret() supports {', '.join(SUPPORTED_TASKS)} models; this model's task is {task!r} "
            "(add its interpreter to transferkit.interpret.INTERPRETERS)"
        )
    return INTERPRETERS[task](model, loader, device=device, precision=precision, progress=progress, **options)
