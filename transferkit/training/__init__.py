"""Training: the `Trainer` loop and what it is made of.

- `trainer`: the loop (fit, evaluate, predict).
- `step`: the one `Step` of every pass (device, precision, forward, loss, backward, clipped update) and
  the gradient accumulation windows.
- `one_sample`: training batches of one sample that BatchNorm cannot normalise (skipped, with a warning).
- `finite`: NaN or infinite validation inputs (an error) and results (a diverged model: a warning).
- `checkpoint`: atomic checkpoints, exact resume, the per-epoch rollback point.
- `distributed`: device, precision and torchrun processes.
- `optim`: optimizers and schedules by name.
- `recipe`: the default recipe (what trains when no freeze was chosen).
- `lr_find`: the learning-rate range test (``Trainer.lr_find``).
- `cache`, `feature_cache`, `cached_parts`, `cacheable`: the frozen prefix's feature cache
  (``cache_features=True``).
- `loaders`: what ``fit`` accepts as loaders, and the `Feed` a pass iterates (batches and their module).
- `callbacks`: the callback protocol, `CSVLogger` and `TensorBoard`.
- `mlflow_logger`: `MLflowLogger`, a run in an MLflow tracking store (the ``mlflow`` extra).
"""

from __future__ import annotations

from .callbacks import CSVLogger, TensorBoard
from .checkpoint import CheckpointError
from .mlflow_logger import MLflowLogger
from .trainer import Trainer

__all__ = ["CSVLogger", "CheckpointError", "MLflowLogger", "TensorBoard", "Trainer"]
