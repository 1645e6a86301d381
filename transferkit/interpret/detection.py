"""Where a detector goes wrong: the AP of each class, and the images with the most missed and false boxes.

`interpret_detection` runs the model once over a loader (`transferkit.interpret.stream.stream`). Every
detection goes to torchmetrics' ``MeanAveragePrecision`` with ``class_metrics=True`` (COCO mAP, as the
task's ``val_map``, with AP per class); per image only four small counts are kept: its true boxes, its
predictions scoring at least ``score_threshold``, the true boxes none of those found (missed) and those
that found no true box (false). A drawing reads its few images again from the loader's dataset.

Matching is COCO's, greedy by score: each prediction, best first, takes the unmatched true box of its
class with which it has the highest IoU, if that IoU is at least ``iou_threshold``.

Examples:
    >>> interp = interpret(detector, val_loader)  # doctest: +SKIP
    >>> interp.most_missed(1)  # doctest: +SKIP
    [DetectionSample(index=3, missed=2, false=1, true_boxes=3, predicted_boxes=2, path='val/images/3.jpg')]
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..models.model import TransferModel
from ..tasks import Task
from ..tasks.detection_metrics import COCO_BACKEND
from ..viz.detection_plots import draw_detection
from ..viz.plots import display_images, require_matplotlib, save_figure
from .stream import Reread, check_pair, rerun, sample_paths, stream

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..training import Trainer

__all__ = ["ClassAP", "DetectionInterpretation", "DetectionSample", "interpret_detection", "match_counts"]

Boxes = dict[str, Tensor]


@dataclass(frozen=True)
class DetectionSample:
    """One image as the detector saw it.

    Attributes:
        index: Its position in the loader's order (0-based).
        missed: Its true boxes that no prediction (scoring at least the threshold) found.
        false: Its predictions (scoring at least the threshold) that found no true box.
        true_boxes: Its true boxes.
        predicted_boxes: Its predictions scoring at least the threshold.
        path: Its image file, when the loader reads a dataset with ``samples`` in order; else None.
    """

    index: int
    missed: int
    false: int
    true_boxes: int
    predicted_boxes: int
    path: str | None = None


@dataclass(frozen=True)
class ClassAP:
    """One class's COCO average precision.

    Attributes:
        name: The class.
        ap: AP averaged over IoU 0.50:0.95 (NaN when the class has no true box).
        ap_50: AP at IoU 0.5 (NaN when the class has no true box).
        true_boxes: Its true boxes in the pass.
    """

    name: str
    ap: float
    ap_50: float
    true_boxes: int


def match_counts(
    predicted: Boxes, truth: Boxes, *, score_threshold: float = 0.3, iou_threshold: float = 0.5
) -> tuple[int, int]:
    """``(missed, false)`` of one image: true boxes no prediction found, predictions that found none.

    Predictions scoring below ``score_threshold`` are left out; the others, best first, each take the
    unmatched true box of their class with the highest IoU, when it is at least ``iou_threshold``.

    Args:
        predicted: ``{"boxes" [D, 4] xyxy, "scores" [D], "labels" [D]}``.
        truth: ``{"boxes" [M, 4] xyxy, "labels" [M]}``.
        score_threshold: The lowest score that counts as a prediction.
        iou_threshold: The lowest IoU of a match.

    Examples:
        >>> truth = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
        ...          "labels": torch.tensor([0, 1])}
        >>> predicted = {"boxes": torch.tensor([[0.0, 0, 10, 11], [40, 40, 50, 50]]),
        ...              "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}
        >>> match_counts(predicted, truth)  # the second true box missed, the second prediction false
        (1, 1)
    """
    keep = predicted["scores"] >= score_threshold
    order = predicted["scores"][keep].argsort(descending=True, stable=True)
    boxes, labels = predicted["boxes"][keep][order].float(), predicted["labels"][keep][order]
    true_boxes = truth["boxes"].reshape(-1, 4).float().to(boxes.device)
    iou = box_iou(boxes, true_boxes)
    iou[labels[:, None] != truth["labels"].to(labels.device)[None, :]] = -1.0  # other classes never match
    taken, false = [False] * len(true_boxes), 0
    for row in iou.tolist():  # [D] predictions, best first, each [M] IoUs
        best, where = max(((v, j) for j, v in enumerate(row) if not taken[j]), default=(-1.0, -1))
        if best >= iou_threshold:
            taken[where] = True
        else:
            false += 1
    return taken.count(False), false


class DetectionInterpretation:
    """Per-class AP and per-image missed and false boxes of one pass (build it with `interpret`).

    Args:
        classes: Class names by index.
        counts: Per image ``[N, 4]`` int32: missed, false, true boxes, predicted boxes.
        metrics: torchmetrics' ``MeanAveragePrecision(class_metrics=True, extended_summary=True)`` result.
        score_threshold: The lowest score counted as a prediction in ``counts``.
        class_boxes: True boxes per class ``[K]``.
        paths: The image file of each sample, or None when the loader does not say.
        model: The model, to draw samples again (`show`).
        reread: How to read samples again from the loader (`transferkit.interpret.stream.Reread`).
        trainer: The pass's Trainer (its device and precision), for the drawings.

    Examples:
        >>> interp = interpret(detector, val_loader)  # doctest: +SKIP
        >>> round(interp.map, 3), round(interp.map_50, 3), interp.per_class_ap()[0]  # doctest: +SKIP
        (0.412, 0.733, ClassAP(name='circle', ap=0.45, ap_50=0.8, true_boxes=21))
    """

    def __init__(
        self,
        classes: list[str],
        counts: Tensor,
        metrics: dict[str, Any],
        score_threshold: float,
        class_boxes: Tensor,
        paths: list[str] | None = None,
        *,
        model: TransferModel | None = None,
        reread: Reread | None = None,
        trainer: Trainer | None = None,
    ) -> None:
        self.classes, self.counts, self.score_threshold, self.paths = classes, counts, score_threshold, paths
        self.model, self.reread, self.trainer = model, reread, trainer
        self.map, self.map_50 = float(metrics["map"]), float(metrics["map_50"])
        self._per_class, self.class_boxes = _class_aps(metrics, len(classes)), class_boxes

    def __len__(self) -> int:
        return len(self.counts)

    def sample(self, index: int) -> DetectionSample:
        """The sample at ``index`` in the loader's order."""
        missed, false, true_boxes, predicted = (int(v) for v in self.counts[index])
        path = None if self.paths is None else self.paths[index]
        return DetectionSample(index, missed, false, true_boxes, predicted, path)

    def _most(self, column: int, k: int, name: str) -> list[DetectionSample]:
        if k < 0:
            raise ValueError(f"{name}(k={k}): k must be >= 0")
        values = self.counts[:, column]
        order = torch.sort(values, descending=True, stable=True).indices
        return [self.sample(int(i)) for i in order[values[order] > 0][:k]]

    def most_missed(self, k: int = 8) -> list[DetectionSample]:
        """The ``k`` images with the most missed true boxes, most first (ties: loader order); only images
        that missed at least one.

        Examples:
            >>> [(s.index, s.missed) for s in interp.most_missed(2)]  # doctest: +SKIP
            [(3, 2), (0, 1)]
        """
        return self._most(0, k, "most_missed")

    def most_false(self, k: int = 8) -> list[DetectionSample]:
        """The ``k`` images with the most false boxes, most first (ties: loader order); only images with at
        least one."""
        return self._most(1, k, "most_false")

    def per_class_ap(self) -> list[ClassAP]:
        """COCO AP (IoU 0.50:0.95) and AP@0.5 of every class, from torchmetrics' ``MeanAveragePrecision``.

        Examples:
            >>> [(c.name, round(c.ap_50, 2)) for c in interp.per_class_ap()]  # doctest: +SKIP
            [('circle', 0.8), ('square', 0.71), ('triangle', 0.66)]
        """
        return [
            ClassAP(name, ap, ap_50, int(boxes))
            for name, (ap, ap_50), boxes in zip(self.classes, self._per_class, self.class_boxes)
        ]

    def show(
        self,
        samples: Sequence[DetectionSample | int],
        path: str | os.PathLike[str] | None = None,
        *,
        columns: int = 4,
    ) -> Figure:
        """``samples`` with their predictions (solid, scoring at least the threshold) and true boxes (dashed).

        The images are read again from the loader's dataset and the model runs on those alone. Panels are
        titled with the image's index in the loader and its missed and false boxes.

        Args:
            samples: `DetectionSample` rows (`most_missed`, `most_false`) or indices in the loader's order.
            path: Where to write the PNG; None only returns the figure.
            columns: Panels per row.

        Returns:
            The matplotlib ``Figure``.

        Raises:
            ValueError: No sample, or the loader was not a `DataLoader` in dataset order.
        """
        require_matplotlib()
        if self.model is None or self.reread is None or self.trainer is None:
            raise ValueError("show() draws an interpretation built by interpret(model, loader)")
        outside = [s for s in samples if isinstance(s, int) and not 0 <= s < len(self)]
        if outside:
            raise ValueError(f"show(): sample {outside[0]} is outside the {len(self)} samples of the pass")
        rows = [self.sample(s) if isinstance(s, int) else s for s in samples]
        inputs, targets = self.reread.batch([s.index for s in rows], "show()")
        outputs = [{k: v.cpu() for k, v in o.items()} for o in rerun(self.trainer, self.model, inputs)]
        images = display_images(self.trainer.task.as_batch(inputs), self.model)
        fig = draw_detection(images, outputs, targets, self.classes, columns, min_score=self.score_threshold)
        for ax, row in zip(fig.axes, rows):
            ax.set_title(f"#{row.index}: {row.missed} missed, {row.false} false", fontsize=9)
        save_figure(fig, path)
        return fig


def _class_aps(metrics: dict[str, Any], num_classes: int) -> list[tuple[float, float]]:
    """``(AP, AP@0.5)`` per class index from torchmetrics' result; NaN where a class has no true box.

    torchmetrics lists the classes it saw in ``classes`` with their AP in ``map_per_class``; AP@0.5 is read
    as COCO's summary reads it: the mean of the precision at IoU 0.5 over the recall points, for all
    areas and the most detections, leaving out -1 (no true box).
    """
    found = [(math.nan, math.nan)] * num_classes
    seen = metrics["classes"].reshape(-1).tolist()
    if not seen or "precision" not in metrics:
        return found
    aps = metrics["map_per_class"].reshape(-1).tolist()
    at_50 = metrics["precision"][0, :, :, 0, -1]  # [R, K]: IoU 0.5, all areas, the most detections
    for k, (label, ap) in enumerate(zip(seen, aps)):
        column = at_50[:, k]
        valid = column[column > -1]
        if 0 <= label < num_classes and ap > -1:
            found[label] = (ap, float(valid.mean()) if len(valid) else math.nan)
    return found


def _image_counts(
    outputs: list[Boxes], targets: list[Boxes], score_threshold: float, iou_threshold: float
) -> Tensor:
    """Per image ``[n, 4]`` int32: missed, false, true boxes, predictions scoring at least the threshold."""
    rows = []
    for o, t in zip(outputs, targets, strict=True):
        missed, false = match_counts(o, t, score_threshold=score_threshold, iou_threshold=iou_threshold)
        rows.append([missed, false, len(t["labels"]), int((o["scores"] >= score_threshold).sum())])
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 4)


def _split_boxes(num_classes: int) -> Any:
    """The pass's batch check: ``(images, box dicts)``, as the task checks them."""

    def split(batch: Any, task: Task, where: str) -> tuple[Any, Any]:
        inputs, targets = check_pair(batch, "boxes", where)
        inputs = task.as_batch(inputs)
        task.check_inputs(inputs, where)
        task.check_batch(inputs, targets, num_classes, where)
        return inputs, targets

    return split


def interpret_detection(
    model: TransferModel,
    loader: Iterable[Any],
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
) -> DetectionInterpretation:
    """Run a detector once over ``loader`` (batches ``(images, box dicts)``) and keep what explains it: COCO
    AP per class, and per image its missed and false boxes.

    Args:
        model: A detection `TransferModel`.
        loader: Batches in a fixed order; targets one ``{"boxes", "labels"}`` per image.
        device: As for `transferkit.Trainer`.
        precision: As for `transferkit.Trainer`.
        progress: A bar over the batches where bars render.
        score_threshold: The lowest score counted as a prediction in the missed and false counts (mAP
            takes every detection the model gives).
        iou_threshold: The lowest IoU of a match.

    Returns:
        The `DetectionInterpretation`.

    Raises:
        ValueError: A threshold outside [0, 1], targets that are not box dicts, or an empty loader.

    Examples:
        >>> interp = interpret_detection(detector, loaders["val"], device="cpu")  # doctest: +SKIP
        >>> len(interp), [c.name for c in interp.per_class_ap()]  # doctest: +SKIP
        (20, ['circle', 'square', 'triangle'])
    """
    from torchmetrics.detection import MeanAveragePrecision

    for name, value in (("score_threshold", score_threshold), ("iou_threshold", iou_threshold)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} is in [0, 1], got {value!r}")
    k = model.num_classes
    average_precision = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, extended_summary=True, backend=COCO_BACKEND
    )
    kept: list[Tensor] = []  # per batch: [n, 4] int32 missed, false, true, predicted (CPU)
    per_class = torch.zeros(k, dtype=torch.long)

    def update(outputs: list[Boxes], targets: list[Boxes]) -> None:
        outputs = [{key: value.cpu() for key, value in o.items()} for o in outputs]
        targets = [{key: value.cpu() for key, value in t.items()} for t in targets]
        average_precision.update(outputs, targets)
        kept.append(_image_counts(outputs, targets, score_threshold, iou_threshold))
        for t in targets:
            per_class.add_(torch.bincount(t["labels"], minlength=k))

    trainer = stream(
        model, loader, update, split=_split_boxes(k), device=device, precision=precision, progress=progress
    )
    counts = torch.cat(kept)
    return DetectionInterpretation(
        model.classes, counts, average_precision.compute(), score_threshold, per_class,
        sample_paths(loader, len(counts)), model=model, reread=Reread(loader, len(counts)), trainer=trainer,
    )  # fmt: skip
