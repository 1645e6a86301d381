"""Recipes: what trains, in which phases, when the user has not said.

The default, ``recipe="auto"``, starts with what is cheap and strong and adds what the data pays for:

1. **probe**: the whole backbone frozen, the head trained to convergence on cached features (about
   `PROBE_STEPS` optimizer steps at `PROBE_LR`; one pass of the backbone over the data, then only the
   head runs). How well frozen ImageNet features separate the classes is the data's similarity to the
   pretraining data, measured for free.
2. **finetune**: from the probe's head (LP-FT: linear probing, then fine-tuning; Kumar et al. 2022), the
   top third of the backbone's blocks (a sixth with fewer than 10 images per class measured near ImageNet,
   half with 10 or more, three quarters with 100 or more; `default_trainable_blocks`) and the head train
   for ``epochs`` epochs at ``lr`` (default `FINETUNE_LR`; three times it from 100 images per class,
   `default_finetune_lr`). Data far from ImageNet (`input_shift` from `FAR_SHIFT`: digits) trains its
   blocks at `FAR_FINETUNE_LR` and the probe's head at `FAR_HEAD_LR` (`finetune_rates`). The probe's
   logits are first divided by `HEAD_TEMPERATURE` (its last linear layer scaled): the same decisions,
   softer probabilities. A probe trained to convergence on separable features is over-confident, and once
   the fine-tuned blocks' BatchNorm switches from ImageNet's statistics to each batch's, its confident
   mistakes gave losses of 3-4 and gradients that tore the pretrained features in the first steps (the
   default then fell below the probe it started from on four of ten tasks of one backbone). From the
   softened head the gradients start small where the features already fit and larger where they do not.
   Measured: 4 and 8.5 points more on the mean of ten tasks on two backbones (``benchmarks/README.md``).
3. With validation data the model ends with whichever phase scored better on it (``val_acc``; a tie
   keeps the fine-tuned model: `phases.keep_the_better`).

The plan is decided once, in ``fit``, from the model and the training set; it is printed in one line
and each history row names its ``phase``. ``recipe="auto"`` applies only when the user has not chosen:
the model's freeze state was never set (`TransferModel.freeze`, ``unfreeze``, ``load_freeze_state`` all
count as a choice), the backbone carries pretrained weights and the task has a measured default
(``Task.default_recipe``: classification). Otherwise it trains what the freeze state says, as
``recipe="finetune"`` does. ``"probe"`` and ``"lp_ft"`` name the phases to run. Measured in
``benchmarks/bench_recipes.py`` (the table is in ``docs/freezing.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from ..tasks import get_task
from .input_shift import input_shift

if TYPE_CHECKING:
    from ..models.features import FeatureInfo
    from ..models.model import TransferModel

__all__ = [
    "DEFAULT_LR",
    "FAR_FINETUNE_LR",
    "FAR_HEAD_LR",
    "FAR_SHIFT",
    "FINETUNE_LR",
    "HEAD_TEMPERATURE",
    "MORE_DATA_PER_CLASS",
    "MOST_DATA_FINETUNE_LR",
    "MOST_DATA_PER_CLASS",
    "PROBE_LR",
    "PROBE_STEPS",
    "RECIPES",
    "Phase",
    "Plan",
    "VIT_LAYER_DECAY",
    "default_finetune_lr",
    "finetune_rates",
    "default_layer_decay",
    "default_trainable_blocks",
    "images_per_class",
    "plan_recipe",
    "probe_epochs",
    "uses_default_recipe",
]

RECIPES = ("auto", "probe", "lp_ft", "finetune")
DEFAULT_LR = 1e-3  # the Trainer's learning rate when none is given
FINETUNE_LR = 1e-3  # the head's rate in the fine-tune phase of a recipe, when no lr is given ...
MOST_DATA_FINETUNE_LR = 3e-3  # ... and from MOST_DATA_PER_CLASS images per class (bench_recipes.py)
FAR_SHIFT = 0.5  # `input_shift` from which data is far from ImageNet (digits 0.55-0.72, photos <= 0.47)
FAR_FINETUNE_LR = 3e-3  # the blocks' rate on far data ...
FAR_HEAD_LR = 3e-4  # ... and the probe's head's: it moves slowly while the blocks adapt (bench_recipes.py)
PROBE_LR = 1e-2  # the probe's rate: a linear head on fixed features converges fast at it
PROBE_STEPS = 300  # optimizer steps the probe aims for ...
PROBE_EPOCHS = (10, 40)  # ... within this many epochs (fewest, most)
UNCACHED_PROBE_EPOCHS = 3  # a probe on augmenting loaders runs the backbone every epoch: kept short
HEAD_TEMPERATURE = 10.0  # the probe's logits are divided by this before fine-tuning (bench_recipes.py)
MORE_DATA_PER_CLASS = 10  # images per class from which the top half trains, not a third or a sixth (near)
MOST_DATA_PER_CLASS = 100  # ... and from which three quarters train, at MOST_DATA_FINETUNE_LR (mnist-100)
VIT_LAYER_DECAY = 0.75  # a ViT block's rate: this times the next one's (benchmarks/bench_vit_decay.py)


@dataclass(frozen=True)
class Phase:
    """One phase of a plan: ``name`` (``"probe"`` or ``"finetune"``), its epochs, its learning rate
    (the head's, and the blocks' times their ``layer_decay`` / ``backbone_lr_mult`` factors), how many
    backbone blocks train (None: what the model's freeze state says), whether the frozen backbone's
    features are cached, the temperature the head's logits are divided by as the phase starts (a
    fine-tune phase after a probe: `HEAD_TEMPERATURE`; 1: the head as it is), and the neck's and head's
    own rate when it differs from ``lr`` (``head_lr``; None: ``lr``)."""

    name: str
    epochs: int
    lr: float
    blocks: int | None
    cached: bool = False
    head_temperature: float = 1.0
    head_lr: float | None = None


@dataclass(frozen=True)
class Plan:
    """What `Trainer.fit` runs: the recipe, its phases in order, and whether the model ends with the
    phase that scored best on validation data (``select``).

    Examples:
        >>> plan = Plan("lp_ft", (Phase("probe", 40, 1e-2, 0), Phase("finetune", 10, 1e-3, 6)), False)
        >>> print(plan.describe(num_blocks=17))
        recipe lp_ft: probe 40 epochs at lr 0.01, then fine-tune the top 6 of 17 blocks 10 epochs at lr 0.001
    """

    recipe: str
    phases: tuple[Phase, ...]
    select: bool

    def phase(self, name: str) -> Phase | None:
        """The phase called ``name``, or None when the plan has none."""
        return next((p for p in self.phases if p.name == name), None)

    def describe(self, num_blocks: int) -> str:
        """The plan in one line, as ``fit`` prints it. Without validation data the default (``"auto"``)
        cannot end with the probe where fine-tuning lost to it (on few images it can: 2 points on one task
        of thirty in ``benchmarks/README.md``), and the line says so."""
        parts = []
        for p in self.phases:
            what = "probe" if p.name == "probe" else "fine-tune"
            if p.name == "finetune":
                what += " as frozen" if p.blocks is None else f" the top {p.blocks} of {num_blocks} blocks"
            cached = " (cached features)" if p.cached else ""
            soft = f" from the head's logits / {p.head_temperature:g}" if p.head_temperature != 1 else ""
            head = f" (the head at {p.head_lr:g})" if p.head_lr is not None else ""
            parts.append(f"{what}{cached}{soft} {p.epochs} epochs at lr {p.lr:g}{head}")
        end = "; ends with the better on val_acc, fine-tuned on a tie" if self.select else ""
        if self.recipe == "auto" and not self.select and len(self.phases) > 1:
            end = "; ends fine-tuned (no validation data to keep the probe where it scores better)"
        return f"recipe {self.recipe}: " + ", then ".join(parts) + end

    def as_dict(self) -> dict[str, Any]:
        """A plain dict, as checkpoints keep it (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """The plan `as_dict` gave ``data`` from.

        Raises:
            ValueError: ``data`` is not such a dict (a damaged or foreign checkpoint).

        Examples:
            >>> plan = Plan("probe", (Phase("probe", 40, 1e-2, 0, cached=True),), False)
            >>> Plan.from_dict(plan.as_dict()) == plan
            True
        """
        try:
            phases = tuple(Phase(**phase) for phase in data["phases"])
            plan = cls(data["recipe"], phases, data["select"])
        except (TypeError, KeyError) as err:
            raise ValueError(f"not a plan's dict ({type(err).__name__}: {err})") from None
        names_ok = all(p.name in ("probe", "finetune") and isinstance(p.epochs, int) for p in phases)
        if plan.recipe not in RECIPES or not names_ok:
            raise ValueError(f"not a plan's dict: recipe {plan.recipe!r}, phases {[p.name for p in phases]}")
        return plan

    @classmethod
    def is_plan_dict(cls, data: Any) -> bool:
        """Whether `from_dict` reads ``data`` (a checkpoint's entry) without error."""
        try:
            cls.from_dict(data)
        except ValueError:
            return False
        return True


def default_trainable_blocks(
    num_blocks: int, images_per_class: float | None = None, near: bool = False
) -> int:
    """How many of the top blocks the fine-tune phase trains: the more images per class, and the further
    the data lies from ImageNet, the more blocks it pays for. A third of them (rounded), a sixth below
    `MORE_DATA_PER_CLASS` images per class on data measured ``near`` ImageNet (`input_shift` below
    `FAR_SHIFT`; the images per class known), half from `MORE_DATA_PER_CLASS`, three quarters from
    `MOST_DATA_PER_CLASS`; at least one.

    Few images like ImageNet's are where fine-tuning has least to gain and most to lose: a sixth of the
    blocks gained 3.4 points on the mean of textures-5 and photos-3 over three backbones against a third
    (on fresh seeds 1.8; one cell of six lost 3.2, EfficientNet-Lite0's textures-5) and ended 12 points
    above a third, and above the probe, on the one task where fine-tuning had fallen below the probe
    (``benchmarks/README.md``); far data with few images (digits-3) lost 3-9 points with a sixth. A
    backbone without BatchNorm statistics (a ViT) measures no shift and keeps a third: on a ViT
    pretrained on digits, fine-tuned on 3 unseen digits per class, a sixth lost 2.6 points.

    Examples:
        >>> [default_trainable_blocks(17, n, near=True) for n in (None, 5, 50, 100)]
        [6, 3, 8, 13]
        >>> default_trainable_blocks(17, 5)  # far, or not measured
        6
    """
    share = 1 / 3
    if images_per_class is not None and images_per_class >= MORE_DATA_PER_CLASS:
        share = 3 / 4 if images_per_class >= MOST_DATA_PER_CLASS else 1 / 2
    elif images_per_class is not None and near:
        share = 1 / 6
    return min(num_blocks, max(1, round(num_blocks * share)))


def default_finetune_lr(images_per_class: float | None = None) -> float:
    """The fine-tune phase's rate when the Trainer is given none: `FINETUNE_LR`, and
    `MOST_DATA_FINETUNE_LR` from `MOST_DATA_PER_CLASS` images per class, where the data pays for moving
    three quarters of the blocks further (and ten epochs of it are enough steps to do so without the
    overfitting that a higher rate brought on 3 to 20 images per class).

    Examples:
        >>> default_finetune_lr(20), default_finetune_lr(100)
        (0.001, 0.003)
    """
    if images_per_class is not None and images_per_class >= MOST_DATA_PER_CLASS:
        return MOST_DATA_FINETUNE_LR
    return FINETUNE_LR


def finetune_rates(images_per_class: float | None, shift: float | None) -> tuple[float, float | None]:
    """The fine-tune phase's rates when the Trainer is given none: ``(lr, head_lr)``.

    Data far from ImageNet (`input_shift` from `FAR_SHIFT`: digits, not textures, photographs or
    scenes) pays for moving the blocks further: they train at `FAR_FINETUNE_LR` while the probe's head
    stays near its solution at `FAR_HEAD_LR` (at the blocks' rate it lost it: 4 points on mnist-10).
    Otherwise `default_finetune_lr` for head and blocks alike (a slow head there gained on one backbone
    and lost on the other).

    Examples:
        >>> finetune_rates(10, 0.70), finetune_rates(10, 0.41), finetune_rates(10, None)
        ((0.003, 0.0003), (0.001, None), (0.001, None))
    """
    if shift is not None and shift >= FAR_SHIFT:
        return FAR_FINETUNE_LR, FAR_HEAD_LR
    return default_finetune_lr(images_per_class), None


def probe_epochs(steps_per_epoch: int) -> int:
    """Epochs of a cached probe: enough for about `PROBE_STEPS` optimizer steps, within `PROBE_EPOCHS`.

    Examples:
        >>> probe_epochs(2), probe_epochs(10), probe_epochs(100)
        (40, 30, 10)
    """
    low, high = PROBE_EPOCHS
    return min(high, max(low, math.ceil(PROBE_STEPS / max(1, steps_per_epoch))))


def uses_default_recipe(model: TransferModel) -> bool:
    """Whether ``recipe="auto"`` decides what ``model`` trains: no freeze chosen by the user,
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


def default_layer_decay(model: TransferModel) -> float | None:
    """The layer-wise rate decay a model fine-tunes with when the Trainer is given none.

    A backbone whose levels all have one stride (a plain ViT: ViT, DeiT, EVA, DINOv2, ...) gets
    `VIT_LAYER_DECAY`, as ViT fine-tuning recipes use (BEiT, MAE: 0.65-0.75): the lower blocks keep the
    general features a small dataset should move least. Measured on a ViT pretrained on real digits and
    fine-tuned on unseen ones (``benchmarks/bench_vit_decay.py``). Other backbones, and a ViT built
    without pretrained weights (trained from scratch, every block has everything to learn): None.

    Examples:
        >>> default_layer_decay(build_model("resnet18", num_classes=2, pretrained=False)) is None
        True
    """
    reductions = cast("FeatureInfo", model.backbone.feature_info).reductions
    one_stride = len(reductions) > 1 and len(set(reductions)) == 1
    pretrained = model.config.get("pretrained", False) is not False
    return VIT_LAYER_DECAY if one_stride and pretrained else None


def plan_recipe(
    recipe: str,
    model: TransferModel,
    train: Any,
    *,
    epochs: int,
    lr: float | None,
    has_val: bool,
    cacheable: bool,
) -> Plan:
    """The plan `Trainer.fit` runs for ``recipe`` (one of `RECIPES`) on ``model`` and ``train``.

    Args:
        recipe: ``"auto"`` (probe, then fine-tune, when `uses_default_recipe`; else ``"finetune"``),
            ``"probe"``, ``"lp_ft"`` or ``"finetune"`` (what the freeze state says, ``epochs`` epochs).
        model: The model.
        train: The training loader (its length sets the probe's epochs; its dataset the images per class).
        epochs: The Trainer's epochs: the fine-tune phase's.
        lr: The Trainer's ``lr`` (None: the recipe's rates); a given rate is the fine-tune phase's.
        has_val: Whether there is validation data to choose the better phase on.
        cacheable: Whether the probe can run on cached features (deterministic loaders, one process).

    Examples:
        >>> plan_recipe("auto", model, train, epochs=10, lr=None, has_val=True, cacheable=True).recipe
        'auto'
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; use one of {list(RECIPES)}")
    if recipe == "finetune" or (recipe == "auto" and not uses_default_recipe(model)):
        return Plan("finetune", (Phase("finetune", epochs, lr or DEFAULT_LR, None),), select=False)
    steps = len(train) if hasattr(train, "__len__") else PROBE_STEPS
    probe = Phase(
        "probe", probe_epochs(steps) if cacheable else UNCACHED_PROBE_EPOCHS, PROBE_LR, 0, cached=cacheable
    )
    if recipe == "probe":
        return Plan("probe", (probe,), select=False)
    chosen = getattr(model, "_freeze_chosen", False)
    per_class = images_per_class(train, model.num_classes)
    shift = None if chosen and lr else input_shift(model, train)
    near = shift is not None and shift < FAR_SHIFT
    blocks = None if chosen else default_trainable_blocks(len(model.blocks), per_class, near)
    rate, head_lr = (lr, None) if lr else finetune_rates(per_class, shift)
    finetune = Phase("finetune", epochs, rate, blocks, head_temperature=HEAD_TEMPERATURE, head_lr=head_lr)
    return Plan(recipe, (probe, finetune), select=recipe == "auto" and has_val)
