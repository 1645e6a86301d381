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

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["COCO_BACKEND", "DetectionMeter"]

COCO_BACKEND = "faster_coco_eval"


def _boxes(t: dict[str, Tensor]) -> Tensor:
    return t["boxes"].detach().float().reshape(-1, 4).cpu()


class DetectionMeter:
    """COCO mAP@[.5:.95] (``map``) and mAP@0.5 (``map_50``) of box detections over an epoch.

    ``state`` is empty: the boxes themselves are gathered from every process when ``compute`` runs (ranks
    may hold different numbers of images), so every rank must call ``compute``. Images without ground
    truth count as in COCO (their detections are false positives); with no ground-truth box at all both
    values are -1, as torchmetrics reports.

    Args:
        num_classes: Unused (COCO's evaluation finds the classes in the data); kept so every task's
            meter takes the same arguments.
        device: Unused (the boxes are kept on the CPU, where the COCO evaluation runs).
        backend: torchmetrics' COCO backend, ``"faster_coco_eval"`` or ``"pycocotools"``.
    """

    state: tuple[Tensor, ...] = ()

    def __init__(
        self,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        backend: str = COCO_BACKEND,
    ) -> None:
        self.backend = backend
        self.preds: list[dict[str, Tensor]] = []
        self.truth: list[dict[str, Tensor]] = []
        self.updates = 0

    def update(self, outputs: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Adds a batch: one ``{"boxes", "scores", "labels"}`` and one ``{"boxes", "labels"}`` per image."""
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} detections for {len(targets)} targets; one of each per image")
        self.preds += [
            {
                "boxes": _boxes(o),
                "scores": o["scores"].detach().float().cpu(),
                "labels": o["labels"].long().cpu(),
            }
            for o in outputs
        ]
        self.truth += [{"boxes": _boxes(t), "labels": t["labels"].long().cpu()} for t in targets]
        self.updates += 1

    def compute(self) -> dict[str, float]:
        """``{"map": ..., "map_50": ...}``, fractions in [0, 1] (-1 without any ground-truth box)."""
        from torchmetrics.detection import MeanAveragePrecision

        preds, truth = _gathered(self.preds), _gathered(self.truth)
        if not preds:
            raise ValueError("DetectionMeter has seen no images; call update() before compute().")
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=self.backend)
        metric.sync_on_compute = False  # every rank already holds every image
        metric.update(preds, truth)
        result = metric.compute()
        return {"map": float(result["map"]), "map_50": float(result["map_50"])}

    def reset(self) -> None:
        """Forgets the accumulated images for a new epoch."""
        self.preds, self.truth, self.updates = [], [], 0


def _gathered(items: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """``items`` from every process of the default group, rank by rank (``items`` itself without one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    everyone: list[list[dict[str, Tensor]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in (part or [])]
