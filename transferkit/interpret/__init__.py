"""See what a trained model learned: its top losses, confusions, per-class scores and calibration.

- `classification`: `interpret` (one streamed pass of a classifier over a loader) and the
  `ClassificationInterpretation` it returns.

It sits above `transferkit.training` (it runs the model through the Trainer's step: device and precision)
and below `transferkit.cli`.

Examples:
    >>> from transferkit.interpret import interpret
    >>> interp = interpret(model, val_loader)  # doctest: +SKIP
    >>> interp.most_confused()[:1]  # doctest: +SKIP
    [('square', 'circle', 3)]
"""

from __future__ import annotations

from .classification import (
    SUPPORTED_TASKS,
    ClassificationInterpretation,
    ClassMetrics,
    ReliabilityBin,
    Sample,
    interpret,
)

__all__ = [
    "SUPPORTED_TASKS",
    "ClassMetrics",
    "ClassificationInterpretation",
    "ReliabilityBin",
    "Sample",
    "interpret",
]
