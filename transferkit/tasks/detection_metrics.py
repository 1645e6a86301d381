"""COCO box mAP for the Trainer, from torchmetrics' ``MeanAveragePrecision``.

The COCO evaluation itself runs in faster-coco-eval, torchmetrics' second backend: a C++ port of
pycocotools' ``COCOeval`` that gives the same numbers several times faster, ships wheels for current
Python, NumPy 2 and every platform torch runs on (pycocotools builds from source on some of them), and is
maintained. transferkit needs no pycocotools anywhere: folders are read with the standard library.

Examples:
    >>> meter = DetectionMeter()
    >>> preds = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
    ...           "labels": torch.tensor([0])}]
    >>> meter.update(preds, [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}])
    >>> meter.compute()
    {'map': 1.0, 'map_50': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["COCO_BACKEND", "CocoBackend", "DetectionMeter"]

CocoBackend = Literal["faster_coco_eval", "pycocotools"]
"""torchmetrics' COCO evaluation backends."""
COCO_BACKEND: CocoBackend = "faster_coco_eval"


def _boxes(t: dict[str, Tensor]) -> Tensor:
    return t["boxes"].detach().float().reshape(-1, 4).cpu()


class DetectionMeter:
    """COCO mAP@[.5:.95] (``map``) and mAP@0.5 (``map_50``) of box detections over an epoch.

    The images are kept, on the CPU, in torchmetrics' ``MeanAveragePrecision``, which ``compute()``
    gathers from every process of ``torch.distributed`` when it is initialised, rank by rank (ranks may
    hold different numbers of images: `transferkit.tasks.metric_sync.GatheredMeanAveragePrecision`), so every
    process must call ``compute``; ``state`` is empty. Images without ground truth count as in COCO
    (their detections are false positives); with no ground-truth box at all both values are -1, as
    torchmetrics reports.

    Args:
        num_classes: Unused (COCO's evaluation finds the classes in the data); kept so every task's
            meter takes the same arguments.
        device: Unused (the boxes are kept on the CPU, where the COCO evaluation runs).
        backend: torchmetrics' COCO backend, ``"faster_coco_eval"`` or ``"pycocotools"``.
    """

    state: tuple[Tensor, ...] = ()  # nothing for the Trainer to sum: torchmetrics gathers the images

    def __init__(
        self,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        backend: CocoBackend = COCO_BACKEND,
    ) -> None:
        from .metric_sync import GatheredMeanAveragePrecision

        self.backend = backend
        self._map = GatheredMeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend)

    @property
    def updates(self) -> int:
        """The batches added since the last reset, on this process."""
        return self._map.update_count

    def update(self, outputs: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Adds a batch: one ``{"boxes", "scores", "labels"}`` and one ``{"boxes", "labels"}`` per image."""
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} detections for {len(targets)} targets; one of each per image")
        preds = [
            {
                "boxes": _boxes(o),
                "scores": o["scores"].detach().float().cpu(),
                "labels": o["labels"].long().cpu(),
            }
            for o in outputs
        ]
        truth = [{"boxes": _boxes(t), "labels": t["labels"].long().cpu()} for t in targets]
        self._map.update(preds, truth)

    def compute(self) -> dict[str, float]:
        """``{"map": ..., "map_50": ...}`` over every process, fractions in [0, 1] (-1 without any
        ground-truth box)."""
        from .metric_sync import synced_compute

        result = synced_compute(self._map)  # ValueError when no process saw an image
        return {"map": float(result["map"]), "map_50": float(result["map_50"])}

    def reset(self) -> None:
        """Forgets the accumulated images for a new epoch."""
        self._map.reset()
