"""The `Task` base class, the task registry and `get_task`; each task lives in its own module here."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..registry import Registry

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["IGNORE_INDEX", "TASKS", "Meter", "Task", "get_task"]

IGNORE_INDEX = 255
"""The mask value of unlabelled pixels: segmentation losses and metrics skip them."""
TASKS = Registry("task")
"""Every task by name (``"classification"``, ``"segmentation"``, ``"detection"``); `get_task` reads it,
and ``@TASKS.register(name)`` adds a `Task` subclass."""


class Meter(Protocol):
    """An epoch metric: ``update`` per batch (the task's outputs and targets), ``compute`` at the end.

    Under ``torch.distributed`` every process calls ``compute``, which returns the value over every
    process: transferkit's meters sync their torchmetrics state themselves and leave ``state`` empty; a
    meter that does not may list in ``state`` count tensors that the Trainer sums across processes first.
    """

    state: tuple[Tensor, ...]

    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


class Task:
    """What one task needs from the training loop, the metrics, the CLI and the plots.

    Subclasses set ``name`` (the ``task`` their heads declare) and override what differs.
    """

    name: str = ""
    collate_fn: Callable[[list[Any]], Any] | None = None  # None: the DataLoader's default collate

    def check_inputs(self, inputs: Any, where: str) -> None:
        """Raise naming ``where`` unless ``inputs`` is a float batch ``[N, C, H, W]``."""
        if not isinstance(inputs, Tensor):
            raise TypeError(
                f"the inputs at {where} are a {type(inputs).__name__}, not a tensor; batches must be "
                "(images [N, C, H, W] float, targets)"
            )
        if inputs.ndim == 3:
            raise ValueError(
                f"the inputs at {where} are one image {list(inputs.shape)}, not a batch [N, C, H, W]; "
                "was a Dataset passed where a loader belongs? Wrap it: DataLoader(dataset, batch_size=32)"
            )
        if inputs.ndim != 4:
            raise ValueError(f"the inputs at {where} have shape {list(inputs.shape)}; expected [N, C, H, W]")
        if not inputs.is_floating_point():
            raise TypeError(
                f"the inputs at {where} are {inputs.dtype} images; the model takes float images scaled to "
                "[0, 1] and normalised with model.data_config's mean and std: convert with "
                "images.float() / 255 and normalise (transferkit.data's transforms do both)"
            )

    def check_targets(self, targets: Tensor, num_classes: int, where: str) -> None:
        """Raise ``ValueError`` naming ``where`` when a target lies outside the classes."""
        if targets.is_floating_point():
            return  # soft targets for a custom loss; the default loss refuses them (`_require_indices`)
        if targets.ndim != 1:
            raise ValueError(
                f"the targets at {where} have shape {list(targets.shape)}; classification takes class "
                "indices [N] (for [N, 1], use targets.squeeze(1))"
            )
        bad = (targets < 0) | (targets >= num_classes)
        if bad.any():
            raise ValueError(
                f"target value {int(targets[bad][0])} at {where} is outside [0, {num_classes}) for "
                f"num_classes={num_classes}; fix the labels or build the model with the right num_classes."
            )

    def to_device(self, targets: Any, device: torch.device) -> Any:
        """Targets on ``device``; integer labels as int64, as the losses want them."""
        targets = targets.to(device, non_blocking=True)
        return targets if targets.is_floating_point() else targets.long()

    def num_samples(self, targets: Any) -> int:
        """Samples in a batch (weights the batch's loss in the epoch mean)."""
        return len(targets)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The default training loss."""
        raise NotImplementedError

    def training_loss(self, label_smoothing: float = 0.0) -> Callable[[Any, Any], Tensor]:
        """The default loss with ``label_smoothing``, for tasks whose loss takes it (cross-entropy ones).

        Raises:
            ValueError: ``label_smoothing`` for a task whose loss has no such option.
        """
        if not label_smoothing:
            return self.loss
        if "label_smoothing" not in inspect.signature(self.loss).parameters:
            raise ValueError(
                f"label_smoothing applies to cross-entropy losses; the {self.name} loss has none"
            )
        loss: Callable[..., Tensor] = self.loss  # a cross-entropy task's loss takes label_smoothing
        return functools.partial(loss, label_smoothing=label_smoothing)

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        """A fresh epoch metric."""
        raise NotImplementedError

    def default_monitor(self, has_val: bool) -> str:
        """The history key that picks the best epoch when the Trainer is given none."""
        return "val_loss" if has_val else "train_loss"

    def collect(self, outputs: Sequence[Any]) -> Any:
        """What ``Trainer.predict`` returns from the per-batch outputs (on the CPU, in loader order)."""
        return torch.cat(list(outputs))

    def prediction(
        self,
        output: Any,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> Any:
        """What ``model.predict`` returns for one image from its output (``size``: the image's ``(H, W)``,
        ``input_size``: the ``(H, W)`` the model saw it at; a task may take `prediction_options` too)."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- data folders
    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        """``{"train": ..., "val": ...}`` for a dataset folder of this task (see `transferkit.data`)."""
        raise NotImplementedError

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        """One split folder with the model's evaluation transforms and fixed class indices."""
        raise NotImplementedError

    def image_transform(
        self, model: TransferModel, image_size: int | None
    ) -> Callable[[Image.Image], Tensor]:
        """The evaluation transform of a single image, as ``predict`` sees it."""
        raise NotImplementedError

    def class_scores(self, outputs: Tensor) -> tuple[Tensor, str]:
        """Per-image class scores ``[N, K]`` for a ranked listing, and the unit they are in."""
        raise NotImplementedError

    predict_picture: str | None = None  # what ``transferkit predict`` draws into the run folder, if anything
    default_neck = "identity"  # the neck ``transferkit train`` builds when given none

    # the columns of `rows` after the class name, as ``transferkit predict --csv`` heads them
    csv_columns: tuple[str, ...] = ("probability",)
    score_unit = ""  # what `describe` says after the scores
    writes_masks = False  # `prediction` is a mask of class indices (``transferkit predict --masks-dir``)

    def prediction_options(self, **options: Any) -> dict[str, Any]:
        """The keyword options of `prediction` given (not None), checked, with this task's defaults.

        Raises:
            ValueError: An option this task's predictions do not take (detection's ``score_threshold``
                and ``max_detections`` given for a classification model), or an invalid value.
        """
        given = sorted(name for name, value in options.items() if value is not None)
        if given:
            raise ValueError(
                f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to detection models; "
                f"this is a {self.name} model (its predictions take top_k)"
            )
        return {}

    def rows(
        self,
        output: Any,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int],
        **options: Any,
    ) -> list[tuple[Any, ...]]:
        """One image's ranked answer: ``(class name, score, ...)`` per row, the columns `csv_columns` names
        after the name; here the ``top_k`` classes by `class_scores`."""
        scores, _ = self.class_scores(output[None])
        values, indices = scores[0].topk(min(top_k, len(classes)))
        return [(classes[i], v) for v, i in zip(values.tolist(), indices.tolist())]

    def describe(
        self,
        output: Any,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int],
        **options: Any,
    ) -> str:
        """One image's output as ``transferkit predict`` prints it: the `rows`, scores with 3 decimals.

        ``size`` is the image's own ``(H, W)``, ``input_size`` the one the model saw.
        """
        rows = self.rows(output, classes, top_k, size, input_size, **options)
        return "  ".join(f"{name} {score:.3f}" for name, score, *_ in rows) + self.score_unit

    def errors(self, outputs: Tensor, targets: Any) -> Tensor | None:
        """Per sample, how wrong the outputs are (0: right), so a run's ``predictions.png`` shows its
        mistakes first; None where the task does not rank samples (the picture then spreads them)."""
        return None

    # ------------------------------------------------------------------------ what the loop calls
    has_val_loss: bool = True  # False: evaluation reports only the metric (detection models in eval mode)
    cacheable: bool = True  # False: Trainer(cache_features=True) is refused for this task
    # Whether exported files run the head's post-processing too, with fixed-size outputs (detection:
    # decoding and NMS, `transferkit.io.export_detection`) instead of the head's output (``logits``).
    export_post_processing: bool = False
    # Evaluation keeps the aspect ratio and crops the centre (True), or resizes the whole image (False);
    # see `transferkit.data.evaluation_geometry`. Export states it in the file's preprocessing.
    eval_center_crop: bool = True
    # Whether the Trainer's default recipe (`transferkit.training.recipe`) applies to a pretrained model
    # of this task whose freeze was never chosen (measured for classification); False: all blocks train.
    default_recipe: bool = False

    def as_batch(self, inputs: Any) -> Any:
        """The inputs as the model takes them (detection: a list of images padded into one batch)."""
        return inputs

    def check_batch(self, inputs: Any, targets: Any, num_classes: int, where: str) -> None:
        """`check_targets`, plus what needs the inputs too (detection: boxes inside the images)."""
        self.check_targets(targets, num_classes, where)

    def forward(self, net: nn.Module, inputs: Any, targets: Any) -> Any:
        """The training and evaluation forward pass; detection passes the targets in training mode."""
        return net(inputs)

    def loss_parts(self, outputs: Any) -> dict[str, Tensor]:
        """Named parts of the loss for the history (``train_loss_<part>``); none for a single loss."""
        return {}

    def float_outputs(self, outputs: Any, device: torch.device | None = None) -> Any:
        """The outputs in float32 (on ``device`` when given), as metrics and ``predict`` take them."""
        outputs = outputs.float()
        return outputs if device is None else outputs.to(device)

    def default_bn(self, pretrained: Any) -> str:
        """The ``bn`` mode a model of this task starts with and ``freeze()`` uses when given none."""
        return "frozen"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _require_indices(targets: Tensor, index_ndim: int, expected: str, name: str) -> None:
    """The default losses take class indices: float targets shaped like indices are a mistake to explain.

    Float targets with a class dimension (``[N, K]``, ``[N, K, H, W]``) are probabilities and pass.
    """
    if not targets.is_floating_point():
        return
    one_channel = index_ndim == 3 and targets.ndim == 4 and targets.shape[1] == 1
    if targets.ndim != index_ndim and not one_channel:
        return
    fix = f"{name}.squeeze(1).long()" if one_channel else f"{name}.long()"
    raise ValueError(
        f"the targets are {targets.dtype} of shape {list(targets.shape)}; the default loss (cross-entropy) "
        f"takes {expected} as integers: convert with {fix} (round first if they were interpolated), or "
        "pass loss= for float targets"
    )


def get_task(name: str) -> Task:
    """The `Task` object for a task name (``model.task``).

    Raises:
        ValueError: An unknown name; the message names the known tasks and the closest match.

    Examples:
        >>> get_task("classification")
        ClassificationTask()
    """
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; the known tasks are {TASKS.names()}. A head declares its task with a "
            "'task' attribute; register a new one with transferkit.tasks.TASKS.register(name)."
        )
    return TASKS.get(name)()
