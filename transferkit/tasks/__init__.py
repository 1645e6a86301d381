"""Tasks: everything that differs between classification, segmentation and detection, one object each.

The Trainer, the CLI and the plots never ask which task a model has; they call its `Task`: it checks
targets, moves them to the device, computes the default loss, builds the epoch metric, names the default
monitor, assembles what ``predict`` returns, and knows how to read a dataset folder for that task.
``model.task`` (from the head's ``task`` attribute) is the name; `get_task` gives the object.

``base.py`` holds the `Task` base class with its defaults and `get_task`; ``classification.py``,
``segmentation.py`` and ``detection.py`` one task each. Adding a task means one more `Task` subclass
registered in `TASKS` and heads that declare its name: no branch elsewhere changes.

Examples:
    >>> task = get_task("segmentation")
    >>> task.loss(torch.randn(2, 3, 8, 8), torch.full((2, 8, 8), 255)).item()  # every pixel ignored
    0.0
    >>> task.default_monitor(has_val=True), get_task("classification").default_monitor(has_val=False)
    ('val_loss', 'train_loss')
"""

from __future__ import annotations

import torch  # noqa: F401  (the examples above use it)

from .base import IGNORE_INDEX, TASKS, Meter, Task, get_task
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "ClassificationTask",
    "DetectionTask",
    "Meter",
    "SegmentationTask",
    "Task",
    "get_task",
]
