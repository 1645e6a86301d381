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
from torch import Tensor

__all__ = ["COCO_BACKEND", "DetectionMeter"]

COCO_BACKEND = "faster_coco_eval"


def _boxes(t: dict[str, Tensor], device: torch.device | str | None) -> Tensor:
    return t["boxes"].detach().float().reshape(-1, 4).to(device)


class DetectionMeter:
    """COCO mAP@[.5:.95] (``map``) and mAP@0.5 (``map_50``) of box detections over an epoch.

    ``state`` is empty: torchmetrics gathers its own lists across processes when ``compute`` runs, so
    every rank must call ``compute``. Images without ground truth count as in COCO (their detections are
    false positives); with no ground-truth box at all both values are -1, as torchmetrics reports.

    Args:
        num_classes: Unused (COCO's evaluation finds the classes in the data); kept so every task's
            meter takes the same arguments.
        device: Where the accumulated boxes live.
        backend: torchmetrics' COCO backend, ``"faster_coco_eval"`` or ``"pycocotools"``.
    """

    state: tuple[Tensor, ...] = ()

    def __init__(
        self,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        backend: str = COCO_BACKEND,
    ) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.device = device
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend).to(device)
        self.updates = 0

    def update(self, outputs: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Adds a batch: one ``{"boxes", "scores", "labels"}`` and one ``{"boxes", "labels"}`` per image."""
        if len(outputs) != len(targets):
            raise ValueError(f"{len(outputs)} detections for {len(targets)} targets; one of each per image")
        preds = [
            {"boxes": _boxes(o, self.device), "scores": o["scores"].detach().float().to(self.device),
             "labels": o["labels"].long().to(self.device)}
            for o in outputs
        ]  # fmt: skip
        truth = [
            {"boxes": _boxes(t, self.device), "labels": t["labels"].long().to(self.device)} for t in targets
        ]
        self.metric.update(preds, truth)
        self.updates += 1

    def compute(self) -> dict[str, float]:
        """``{"map": ..., "map_50": ...}``, fractions in [0, 1] (-1 without any ground-truth box)."""
        if not self.updates:
            raise ValueError("DetectionMeter has seen no images; call update() before compute().")
        result = self.metric.compute()
        return {"map": float(result["map"]), "map_50": float(result["map_50"])}

    def reset(self) -> None:
        """Forgets the accumulated images for a new epoch."""
        self.metric.reset()
        self.updates = 0
