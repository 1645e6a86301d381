"""How far a training set lies from the pretraining data, as the pretrained BatchNorm layers see it.

A pretrained BatchNorm layer holds the mean and variance of its inputs over the pretraining data. On a
batch of the training set, the distance of the batch's channel means from those running means (in
running standard deviations), averaged over the channels and over the first quarter of the backbone's
BatchNorm layers (the low-level features, before they turn task-specific), says how unlike ImageNet's
images the new ones are: on the real tasks of ``benchmarks/bench_recipes.py`` 0.55-0.72 for digits
and 0.33-0.47 for textures, photographs and scenes, the same for every seed and on two backbones.
`recipe.plan_recipe` fine-tunes data from `recipe.FAR_SHIFT` on with a slow head and faster blocks.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset, default_collate

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["SHIFT_IMAGES", "input_shift"]

SHIFT_IMAGES = 64  # training images the shift is measured on, spread evenly over the dataset


class _Measured(Exception):
    """Raised by the last hooked layer: the rest of the backbone need not run."""


def _pretrained_norms(model: TransferModel) -> list[nn.modules.batchnorm._BatchNorm]:
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return [m for m in norms if m.running_mean is not None and m.running_var is not None]


def _images(train: Any, count: int) -> torch.Tensor | None:
    """Up to ``count`` images of ``train``'s dataset at evenly spaced indices, batched by the loader's
    own ``collate_fn``, or None for a loader without a map-style dataset whose batches are
    ``(images, ...)``."""
    dataset = getattr(train, "dataset", None)
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    if size == 0 or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    collate = getattr(train, "collate_fn", None) or default_collate
    indices = torch.linspace(0, size - 1, min(count, size)).round().long().unique().tolist()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # a random transform's draws leave the run's sequence as it was
        batch = collate([dataset[i] for i in indices])  # type: ignore[index]
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return images if isinstance(images, torch.Tensor) and images.dim() == 4 else None


def input_shift(model: TransferModel, train: Any, images: int = SHIFT_IMAGES) -> float | None:
    """The mean standardised shift of a batch's channel means from the running means of the first
    quarter of ``model``'s pretrained BatchNorm layers (at least one).

    ``|batch mean - running mean| / sqrt(running var + eps)``, averaged over channels and layers, on up
    to ``images`` images of ``train``'s dataset (evenly spaced; torch's, numpy's and ``random``'s
    generators are restored after a random transform drew from them, so the run's data order is kept).
    The model runs in eval mode without gradients and is left as it was. None when the backbone has no
    BatchNorm layer with running statistics (a ViT, a model with frozen-statistics norms) or the
    loader's dataset cannot be indexed for ``(image, ...)`` items.

    Args:
        model: The model, with its pretrained backbone.
        train: The training loader.
        images: How many images to measure on.

    Returns:
        The shift (0: ImageNet-like inputs; 0.55-0.72 for digits), or None.

    Examples:
        >>> shift = input_shift(model, train_loader)  # e.g. 0.41 for photographs
    """
    norms = _pretrained_norms(model)
    x = _images(train, images) if norms else None
    if x is None:
        return None
    hooked = norms[: max(1, len(norms) // 4)]
    shifts: list[torch.Tensor] = []

    def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        mean = inputs[0].float().mean(dim=[d for d in range(inputs[0].dim()) if d != 1])
        scale = (module.running_var.float() + module.eps).sqrt()  # type: ignore[operator]
        shifts.append(((mean - module.running_mean.float()).abs() / scale).mean())  # type: ignore[operator]
        if module is hooked[-1]:
            raise _Measured

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(measure) for m in hooked]
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model.backbone(x.to(device))
    except _Measured:
        pass
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return float(torch.stack(shifts).mean()) if shifts else None
