"""See what a trained model learned: its top losses, confusions, per-class scores and calibration.

- `run`: `interpret` (one streamed pass of a model over a loader), which hands the model to its task's
  interpreter (`INTERPRETERS`).
- `classification`: the `ClassificationInterpretation` of a classifier.
- `segmentation`: the `SegmentationInterpretation` of a segmentation model (worst images by IoU,
  per-class IoU).
- `detection`: the `DetectionInterpretation` of a detector (per-class AP, the images with the most
  missed and false boxes).
- `stream`: the pass they share, and how drawings read their few samples again.
- `cam`: class-activation maps through the ``grad-cam`` package (the ``gradcam`` extra):
  `activation_maps`, and `show_top_losses` with the maps overlaid.

It sits above `transferkit.training` (it runs the model through the Trainer's step: device and precision)
and below `transferkit.cli`.

Examples:
    >>> from transferkit.interpret import interpret
    >>> interp = interpret(model, val_loader)  # doctest: +SKIP
    >>> interp.most_confused()[:1]  # doctest: +SKIP
    [('square', 'circle', 3)]
"""

from __future__ import annotations

from .cam import CAM_METHODS, activation_maps, show_top_losses
from .classification import (
    ClassificationInterpretation,
    ClassMetrics,
    ReliabilityBin,
    Sample,
    interpret_classification,
)
from .detection import ClassAP, DetectionInterpretation, DetectionSample, interpret_detection
from .run import INTERPRETERS, SUPPORTED_TASKS, interpret
from .segmentation import SegmentationInterpretation, SegmentationSample, interpret_segmentation

__all__ = [
    "CAM_METHODS",
    "INTERPRETERS",
    "SUPPORTED_TASKS",
    "ClassAP",
    "ClassMetrics",
    "ClassificationInterpretation",
    "DetectionInterpretation",
    "DetectionSample",
    "ReliabilityBin",
    "Sample",
    "SegmentationInterpretation",
    "SegmentationSample",
    "activation_maps",
    "interpret",
    "interpret_classification",
    "interpret_detection",
    "interpret_segmentation",
    "show_top_losses",
]
