"""Warnings about data that trains without an error but measures or learns less than it seems.

`warn_uncovered_classes`: the val split lacks some classes, so the val metrics say nothing about them.
`warn_small_inputs`: the inputs are so small that the backbone's coarsest feature map is 1x1 (8 px images
into a ResNet, whose coarsest stride is 32): a classifier's deepest layers then see mostly padding, and a
detection head has no cell to place boxes in (24 px detection ends with mAP 0). ``Trainer.fit`` calls
both once per ``fit``: at its start, and the size check again at the first batch when the loaders do
not declare their input size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.utils.data import Subset

from ..models.classes import dataset_classes

__all__ = ["warn_about_data", "warn_small_inputs", "warn_uncovered_classes"]


def _shown(names: Sequence[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(repr, names[:limit])) + more


def _labels_present(loader: Any) -> set[int] | None:
    """The class indices a loader's dataset holds, where it lists them without decoding a sample:
    ``dataset.targets`` (``ImageFolder``, the class folders, torchvision's sets) or the boxes' labels of a
    detection folder (``dataset.samples[i].labels``), through ``Subset``; else None."""
    dataset, indices = getattr(loader, "dataset", None), None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    targets = getattr(dataset, "targets", None)
    if isinstance(targets, Tensor) and targets.ndim == 1:
        targets = targets.tolist()
    if isinstance(targets, Sequence) and all(isinstance(t, int) for t in targets):
        return {targets[i] for i in indices} if indices is not None else set(targets)
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, Sequence) and all(isinstance(getattr(s, "labels", None), Tensor) for s in samples):
        chosen = [samples[i] for i in indices] if indices is not None else samples
        return {int(label) for sample in chosen for label in sample.labels.tolist()}
    return None


def warn_uncovered_classes(model: Any, train: Any, val: Any, stacklevel: int = 2) -> None:
    """Warn when the val loader holds no sample (or, for detection, no box) of some of the classes.

    The names come from the train loader's dataset (`dataset_classes`), else from ``model.classes``. Only
    datasets that list their labels are looked at (see `_labels_present`); masks are never read.
    """
    if val is None:
        return
    present = _labels_present(val)
    if present is None:
        return
    names = dataset_classes(train) or list(getattr(model, "classes", []))
    missing = [name for index, name in enumerate(names) if index not in present]
    if missing:
        warnings.warn(
            f"the val split holds nothing of {len(missing)} of the {len(names)} classes "
            f"({_shown(missing)}); the val metrics do not measure those classes: move or add some of their "
            "images into val",
            UserWarning,
            stacklevel=stacklevel,
        )


def _input_side(model: Any, inputs: Any) -> tuple[int, int] | None:
    if inputs is not None:
        shape: Any = getattr(inputs, "shape", ())
        return (int(shape[-2]), int(shape[-1])) if len(shape) == 4 else None
    if getattr(model, "config", {}).get("data_config") is None:
        return None  # not known yet: the loaders do not say it, and fit looks at the first batch
    height, width = model.data_config["input_size"][-2:]
    return int(height), int(width)


def warn_small_inputs(model: Any, inputs: Any = None, stacklevel: int = 2) -> None:
    """Warn when inputs of this size leave the backbone's coarsest feature map at 1x1 where it matters.

    The size is that of ``inputs`` (a batch ``[N, C, H, W]``), else the one ``model.data_config`` records
    (when it records one). A classifier or segmenter is warned below the coarsest stride ``r`` (the
    deepest maps are then made mostly of padding), and is told to use at least ``r`` px; a detector
    whenever that map is 1x1, and is told to use at least ``2 r`` px (a 2x2 map).

    Examples:
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)  # coarsest stride 32
        >>> warn_small_inputs(model, torch.zeros(2, 3, 8, 8))  # doctest: +SKIP
        UserWarning: inputs of 8x8 px leave resnet18's coarsest feature map (stride 32 px) at 1x1, ...
    """
    size = _input_side(model, inputs)
    info = getattr(getattr(model, "backbone", None), "feature_info", None)
    if size is None or info is None:
        return
    stride = max(info.reductions)
    side = min(size)
    if getattr(model, "task", "classification") == "detection":
        if math.ceil(side / stride) >= 2:
            return
        need, why = 2 * stride, "too coarse for the detection head to place boxes (mAP stays near 0)"
    else:
        if side >= stride:
            return
        need, why = stride, "so its deepest layers see mostly padding and learn little"
    backbone = getattr(model, "config", {}).get("backbone", "the backbone")
    warnings.warn(
        f"inputs of {size[0]}x{size[1]} px leave {backbone}'s coarsest feature map (stride {stride} px) at "
        f"1x1, {why}; use images of at least {need} px (image_size= in the folder loaders, --image-size "
        "in transferkit train)",
        UserWarning,
        stacklevel=stacklevel,
    )


def warn_about_data(model: Any, train: Any, val: Any) -> None:
    """What ``fit`` checks at its start: `warn_uncovered_classes`, and `warn_small_inputs` where the
    loaders (or the model) say the input size."""
    warn_uncovered_classes(model, train, val, stacklevel=4)
    warn_small_inputs(model, stacklevel=4)
