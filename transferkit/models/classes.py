"""Class names: what each output of a model means, checked against its head and read from training data.

A model keeps its names in ``model.config["classes"]``, so ``build_model(**model.config)``, ``model.save``
and ``load_model`` carry them; ``model.classes`` reads them (``"0" .. "K-1"`` when none are known). They
come from ``build_model(classes=[...])``, from ``model.classes = [...]``, or from the training data: at
the start of ``fit`` the Trainer takes `dataset_classes` of the train loader when the model has none.
For segmentation, index 0 is usually ``"background"``, as the folder helpers name it.

Examples:
    >>> check_class_names(("ants", "bees"), 2)
    ['ants', 'bees']
    >>> check_class_names(["ants"], 2)
    Traceback (most recent call last):
    ValueError: classes has 1 name(s) but the head has num_classes=2 outputs; give one name per output
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.data import Subset

if TYPE_CHECKING:
    from .model import TransferModel

__all__ = ["check_class_names", "dataset_classes", "fill_classes"]


def check_class_names(names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """``names`` as a list of strings (None stays None); one distinct name per output or an error.

    Raises:
        TypeError: ``names`` is a single string or not a sequence.
        ValueError: The count differs from ``num_classes``, or a name repeats.
    """
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(
            f"classes must be a list of names, one per output (e.g. ['ants', 'bees']), got "
            f"{type(names).__name__} {names!r}"
        )
    names = [str(name) for name in names]
    if len(names) != num_classes:
        raise ValueError(
            f"classes has {len(names)} name(s) but the head has num_classes={num_classes} outputs; "
            "give one name per output"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"classes names {repeated} more than once; each output needs its own name")
    return names


def dataset_classes(loader: Any) -> list[str] | None:
    """The names a loader's dataset declares in ``dataset.classes`` (through ``Subset``), or None.

    ``ImageFolder``, the `transferkit.data` folders and ``SyntheticShapes`` declare them.
    """
    dataset = getattr(loader, "dataset", loader)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        return None
    return [str(name) for name in names]


def fill_classes(model: TransferModel, loader: Any) -> None:
    """Give ``model`` the class names of ``loader``'s dataset, when it has none and the count fits.

    Raises:
        ValueError: The dataset names fewer classes than the model has outputs: the extra outputs would
            never train and the names would be lost (``"0" .. "K-1"``). More classes than outputs are
            refused at the first batch, by the target check (`Task.check_targets`).
    """
    names = dataset_classes(loader)
    if names is not None and len(names) < model.num_classes:
        shown = ", ".join(map(repr, names[:10])) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise ValueError(
            f"the training data has {len(names)} class(es) ({shown}) but the model has "
            f"num_classes={model.num_classes} outputs; build the model with num_classes={len(names)}, or "
            "give the data its other classes."
        )
    if model.config.get("classes") is not None:
        return
    if names is not None and len(names) == model.num_classes and len(set(names)) == len(names):
        model.classes = names
