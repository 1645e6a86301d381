"""What a classifier got wrong and how sure it was: top losses, confusion, per-class scores, calibration.

`interpret_classification` (what `interpret` runs for a classifier) runs the model once over a loader, in
eval mode and without gradients, through the Trainer's own `transferkit.training.Trainer.stepper` (device,
precision, memory format; `transferkit.interpret.stream.stream`). It keeps four scalars per
sample (loss, true class, predicted class, top-1 probability) and a torchmetrics confusion matrix updated
per batch: never the images or the ``[N, K]`` logits, so it scales with the dataset, not with ``K``.

Examples:
    >>> interp = interpret(model, val_loader)  # doctest: +SKIP
    >>> interp.top_losses(2)  # doctest: +SKIP
    [Sample(index=7, true='square', predicted='circle', probability=0.97, loss=3.6, path='val/square/3.jpg'),
     Sample(index=2, ...)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.model import TransferModel
from ..tasks import Task
from .stream import check_pair, sample_paths, stream

__all__ = [
    "ClassMetrics",
    "ClassificationInterpretation",
    "ReliabilityBin",
    "Sample",
    "interpret_classification",
]


@dataclass(frozen=True)
class Sample:
    """One sample as the model saw it.

    Attributes:
        index: Its position in the loader's order (0-based).
        true: Its class name.
        predicted: The model's most likely class name.
        probability: The model's probability of ``predicted``.
        loss: Its cross-entropy loss (natural log).
        path: Its file, when the loader reads a dataset with ``samples`` in order; else None.
    """

    index: int
    true: str
    predicted: str
    probability: float
    loss: float
    path: str | None = None


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class (0 where a ratio has no samples to count)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: confidences in ``[lower, upper)`` (the last bin includes 1).

    Attributes:
        lower: The bin's lowest confidence.
        upper: Its highest.
        confidence: Mean top-1 probability of its samples (0 when empty).
        accuracy: Share of its samples predicted right (0 when empty).
        count: Samples in it.
    """

    lower: float
    upper: float
    confidence: float
    accuracy: float
    count: int


class ClassificationInterpretation:
    """Per-sample results and the confusion matrix of one pass of a classifier (build it with `interpret`).

    Args:
        classes: Class names by index.
        losses: Per-sample cross-entropy ``[N]``.
        targets: True class indices ``[N]``.
        predictions: Predicted class indices ``[N]``.
        probabilities: Probability of the predicted class ``[N]``.
        confusion: ``[K, K]`` counts, rows true, columns predicted.
        paths: The file of each sample, or None when the loader does not say.

    Examples:
        >>> interp = interpret(model, val_loader)  # doctest: +SKIP
        >>> interp.confusion_matrix().shape, interp.most_confused()  # doctest: +SKIP
        (torch.Size([2, 2]), [('square', 'circle', 3), ('circle', 'square', 1)])
    """

    def __init__(
        self,
        classes: list[str],
        losses: Tensor,
        targets: Tensor,
        predictions: Tensor,
        probabilities: Tensor,
        confusion: Tensor,
        paths: list[str] | None = None,
    ) -> None:
        self.classes, self.losses, self.targets, self.predictions = classes, losses, targets, predictions
        self.probabilities, self.confusion, self.paths = probabilities, confusion, paths

    def __len__(self) -> int:
        return len(self.losses)

    def sample(self, index: int) -> Sample:
        """The sample at ``index`` in the loader's order."""
        return Sample(
            index=index,
            true=self.classes[int(self.targets[index])],
            predicted=self.classes[int(self.predictions[index])],
            probability=float(self.probabilities[index]),
            loss=float(self.losses[index]),
            path=None if self.paths is None else self.paths[index],
        )

    def top_losses(self, k: int = 16) -> list[Sample]:
        """The ``k`` samples with the highest loss, highest first (ties: loader order).

        Examples:
            >>> [(s.index, s.true, s.predicted) for s in interp.top_losses(2)]  # doctest: +SKIP
            [(7, 'square', 'circle'), (2, 'circle', 'square')]
        """
        if k < 0:
            raise ValueError(f"top_losses(k={k}): k must be >= 0")
        order = torch.sort(self.losses, descending=True, stable=True).indices[:k]
        return [self.sample(int(i)) for i in order]

    def errors(self) -> list[Sample]:
        """Every misclassified sample, in loader order."""
        wrong = (self.predictions != self.targets).nonzero().flatten()
        return [self.sample(int(i)) for i in wrong]

    def confusion_matrix(self) -> Tensor:
        """``[K, K]`` counts (int64): row = true class, column = predicted class."""
        return self.confusion.clone()

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """``(true, predicted, count)`` for each off-diagonal cell with at least ``min_count``, most first.

        Examples:
            >>> interp.most_confused()  # doctest: +SKIP
            [('square', 'circle', 3), ('circle', 'square', 1)]
        """
        pairs = [
            (self.classes[t], self.classes[p], int(self.confusion[t, p]))
            for t in range(len(self.classes))
            for p in range(len(self.classes))
            if t != p and int(self.confusion[t, p]) >= max(min_count, 1)
        ]
        return sorted(pairs, key=lambda pair: -pair[2])  # stable: ties stay in (true, predicted) order

    def per_class(self) -> list[ClassMetrics]:
        """Precision, recall, F1 and support of every class, from the confusion matrix.

        Examples:
            >>> interp.per_class()[0]  # doctest: +SKIP
            ClassMetrics(name='circle', precision=0.75, recall=0.9, f1=0.818..., support=10)
        """
        cm = self.confusion.double()
        hits, support, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)
        precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
        recall = torch.where(support > 0, hits / support.clamp(min=1), 0.0)
        both = precision + recall
        f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), 0.0)
        return [
            ClassMetrics(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(self.classes)
        ]

    def calibration(self, n_bins: int = 15) -> tuple[float, list[ReliabilityBin]]:
        """Expected calibration error (top-1, l1) and the reliability diagram's ``n_bins`` equal bins.

        The error is torchmetrics' ``binary_calibration_error`` on the top-1 probability and whether it was
        right: the same number as ``MulticlassCalibrationError(norm="l1")`` on the full probabilities.

        Examples:
            >>> ece, bins = interp.calibration(n_bins=10)  # doctest: +SKIP
            >>> round(ece, 3), bins[-1].count  # doctest: +SKIP
            (0.042, 31)
        """
        from torchmetrics.functional.classification import binary_calibration_error

        if n_bins < 1:
            raise ValueError(f"calibration(n_bins={n_bins}): n_bins must be >= 1")
        confidence = self.probabilities.double()
        correct = (self.predictions == self.targets).double()
        ece = binary_calibration_error(confidence, correct.long(), n_bins=n_bins, norm="l1")
        edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
        which = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
        count = torch.bincount(which, minlength=n_bins)
        means = [
            torch.bincount(which, v, minlength=n_bins) / count.clamp(min=1) for v in (confidence, correct)
        ]
        bins = [
            ReliabilityBin(float(lower), float(upper), float(conf), float(acc), int(n))
            for lower, upper, conf, acc, n in zip(edges[:-1], edges[1:], *means, count, strict=True)
        ]
        return float(ece), bins


def interpret_classification(
    model: TransferModel,
    loader: Iterable[Any],
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> ClassificationInterpretation:
    """Run ``model`` once over ``loader`` (batches ``(images, class indices)``) and keep what explains it.

    Args:
        model: A classification `TransferModel`; ``model.classes`` names the classes.
        loader: Batches in a fixed order; with a sequential DataLoader over a dataset that has
            ``samples`` (`transferkit.data.ClassFolder`, also under a ``Subset``) each sample gets its path.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... as for `transferkit.Trainer`.
        precision: As for `transferkit.Trainer` (``"auto"``: bf16 / fp16 autocast on CUDA, fp32 elsewhere).
        progress: A bar over the batches where bars render.

    Returns:
        The `ClassificationInterpretation`; its losses are computed in float32 from the model's outputs.

    Raises:
        ValueError: Targets that are not class indices, or an empty loader.

    Examples:
        >>> interp = interpret_classification(model, loaders["val"], device="cpu")  # doctest: +SKIP
        >>> len(interp), interp.confusion_matrix().shape  # doctest: +SKIP
        (20, torch.Size([2, 2]))
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    num_classes = model.num_classes
    confusions: list[MulticlassConfusionMatrix] = []  # one, on the pass's device from the first batch
    kept: list[Tensor] = []  # per batch: [4, n] loss, target, prediction, probability (float64, CPU)

    def update(logits: Tensor, targets: Tensor) -> None:
        if not confusions:
            confusions.append(MulticlassConfusionMatrix(num_classes).to(targets.device))
        probability, prediction = logits.softmax(1).max(1)
        loss = F.cross_entropy(logits, targets, reduction="none")
        confusions[0].update(prediction, targets)
        kept.append(torch.stack([t.double() for t in (loss, targets, prediction, probability)]).cpu())

    def split(batch: Any, task: Task, where: str) -> tuple[Any, Tensor]:
        return _split(batch, num_classes, task, where)

    stream(model, loader, update, split=split, device=device, precision=precision, progress=progress)
    losses, targets, predictions, probabilities = torch.cat(kept, dim=1)
    return ClassificationInterpretation(
        model.classes, losses.float(), targets.long(), predictions.long(), probabilities.float(),
        confusions[0].compute().long().cpu(), sample_paths(loader, len(losses)),
    )  # fmt: skip


def _split(batch: Any, num_classes: int, task: Any, where: str) -> tuple[Any, Tensor]:
    """A batch's ``(inputs, targets)``, the targets checked to be class indices in range."""
    inputs, targets = check_pair(batch, "classes", where)
    if not isinstance(targets, Tensor) or targets.is_floating_point():
        raise ValueError(f"the targets at {where} are not class indices [N] (an int tensor); pass those")
    task.check_targets(targets, num_classes, where)
    return inputs, targets
