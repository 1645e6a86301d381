"""The default fine-tuning recipe: what trains when the user has not said.

Measured with real ImageNet weights (EfficientNet-Lite0) on four small real tasks, 3 seeds each
(``benchmarks/bench_recipes.py``; the table is in ``benchmarks/README.md`` and ``docs/freezing.md``):
with fewer than 10 training images per class, training the top **third** of the backbone's blocks
with the head (``last_n``) was the best recipe; with 10 or more per class the top **half** did better
(the third fell 5 points behind on the 10-shot photo task). The rate is 1e-3, except below 5 images per
class: there a new head gets only a handful of optimizer steps, and the same recipe at 1e-2 did 6
points better on 3 images per class (at 1e-2 it lost 4 points on 5 per class and 10 on 10 per class).
Full fine-tuning at 1e-3 lost 35 points on 3 images per class, and a frozen backbone 7 to 14 points on
three of the four tasks. Both defaults take about 60 to 75 % of the time of full fine-tuning, since
the frozen bottom runs without autograd.

The recipe applies only when the user has not chosen: the model's freeze state was never set
(`TransferModel.freeze`, ``unfreeze``, ``load_freeze_state`` all count as a choice), the backbone
carries pretrained weights and the task has a measured default (``Task.default_recipe``:
classification). The Trainer applies it when it is built (the small-data third, as the data is not
known yet) and again when ``fit`` sees the training set; the rate follows the data only when the
Trainer was given no ``lr``. ``model.unfreeze()`` before the Trainer is the way to fine-tune everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..tasks import get_task

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = [
    "DEFAULT_LR",
    "FEW_SHOT_LR",
    "FEW_SHOT_PER_CLASS",
    "MORE_DATA_PER_CLASS",
    "apply_default_recipe",
    "default_lr",
    "default_lr_scale",
    "default_trainable_blocks",
    "uses_default_recipe",
]

MORE_DATA_PER_CLASS = 10  # training images per class from which the top half trains instead of a third
DEFAULT_LR = 1e-3  # the Trainer's learning rate when none is given
FEW_SHOT_PER_CLASS = 5  # below this many training images per class the default recipe trains at FEW_SHOT_LR
FEW_SHOT_LR = 1e-2


def default_trainable_blocks(num_blocks: int, images_per_class: float | None = None) -> int:
    """How many of the top blocks the default recipe trains: a third of them (rounded), or half with
    ``images_per_class >= 10``; at least one.

    Examples:
        >>> default_trainable_blocks(17), default_trainable_blocks(17, 50), default_trainable_blocks(9, 5)
        (6, 8, 3)
    """
    more = images_per_class is not None and images_per_class >= MORE_DATA_PER_CLASS
    return min(num_blocks, max(1, round(num_blocks * (1 / 2 if more else 1 / 3))))


def default_lr(images_per_class: float | None = None) -> float:
    """The learning rate the default recipe trains at when the user gave none: 1e-3, or 1e-2 with
    fewer than 5 training images per class (a handful of optimizer steps, too few at 1e-3 for a new
    head; measured in ``benchmarks/bench_recipes.py``).

    Examples:
        >>> default_lr(), default_lr(3), default_lr(5)
        (0.001, 0.01, 0.001)
    """
    few = images_per_class is not None and images_per_class < FEW_SHOT_PER_CLASS
    return FEW_SHOT_LR if few else DEFAULT_LR


def default_lr_scale(model: TransferModel, train_loader: Any) -> float:
    """Factor from `DEFAULT_LR` to the rate the default recipe wants for ``train_loader`` (1.0 when the
    recipe does not decide what ``model`` trains)."""
    if not uses_default_recipe(model):
        return 1.0
    return default_lr(images_per_class(train_loader, model.num_classes)) / DEFAULT_LR


def uses_default_recipe(model: TransferModel) -> bool:
    """Whether `apply_default_recipe` decides what ``model`` trains: no freeze chosen by the user,
    pretrained weights, and a task with a measured default (``Task.default_recipe``)."""
    chosen = getattr(model, "_freeze_chosen", False)
    pretrained = model.config.get("pretrained", False) is not False
    return not chosen and pretrained and get_task(model.task).default_recipe and len(model.blocks) > 1


def images_per_class(loader: Any, num_classes: int) -> float | None:
    """Training images per class of a loader whose dataset has a length; None when it has none."""
    try:
        return len(loader.dataset) / num_classes
    except (AttributeError, TypeError):
        return None


def apply_default_recipe(model: TransferModel, train_loader: Any = None) -> bool:
    """Freeze all but the top third (or half, with 10+ images per class in ``train_loader``) of a
    pretrained classifier whose freeze state the user never chose.

    The freeze it sets is not a choice of the user's: a later call (the Trainer's ``fit``, once it
    knows the training set) decides again.

    Returns:
        Whether it decided (False: the user's choice, random weights, or a task without a measured
        default are left as they are).

    Examples:
        >>> model = build_model("resnet18", num_classes=2)  # pretrained, never frozen: 9 blocks
        >>> apply_default_recipe(model), model.trainable_blocks
        (True, ['layer3.1', 'layer4.0', 'layer4.1'])
        >>> model.unfreeze(); apply_default_recipe(model)  # a choice: kept
        False
    """
    if not uses_default_recipe(model):
        return False
    per_class = images_per_class(train_loader, model.num_classes) if train_loader is not None else None
    model.freeze("last_n", n=default_trainable_blocks(len(model.blocks), per_class))
    model._freeze_chosen = False  # the recipe's, not the user's
    return True
