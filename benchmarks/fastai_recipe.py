"""fastai's transfer-learning recipe, side by side with ours: the same tensors, the same real weights.

`fastai_fine_tune` trains with fastai itself (``pip install fastai``, in the ``bench`` extra):
``vision_learner(dls, arch, ...)`` builds fastai's model (timm's body, cut before its pooling, and
fastai's head: concat pooling, batch norm, dropout, two linear layers), freezes the body, and
``Learner.fine_tune(epochs)`` trains the head for one one-cycle epoch, then everything for ``epochs``
one-cycle epochs with discriminative rates. Everything else is fastai's default too (Adam with
decoupled weight decay 0.01, ``base_lr`` 2e-3, momentum 0.95-0.85-0.95, batch-norm layers trained
while frozen, the last partial training batch dropped), with no augmentation: the tensors are already
normalised, so fastai adds no ``Normalize``.

The weights come from the local file `real_weights.weights_file` writes (timm's key names): fastai's
own timm path (``vision_learner`` with the timm model name) is given the file through timm's
``pretrained_cfg_overlay``, so nothing is downloaded, and the runner checks that the body holds the
file's tensors before training.

Examples:
    >>> import real_weights  # doctest: +SKIP
    >>> train, test = real_weights.TASKS["digits-3"][0](0)  # doctest: +SKIP
    >>> weights = real_weights.weights_file("/tmp/weights")  # doctest: +SKIP
    >>> acc, seconds = fastai_fine_tune(train, test, weights, real_weights.ARCH, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

Split = tuple[torch.Tensor, torch.Tensor]


def fastai_fine_tune(
    train: Split,
    test: Split,
    weights: Path,
    arch: str,
    *,
    seed: int,
    epochs: int = 10,
    batch_size: int = 16,
    base_lr: float = 2e-3,
    drop_last: bool = True,
) -> tuple[float, float]:
    """Train fastai's ``vision_learner`` with ``fine_tune(epochs)`` on ``train``; score it on ``test``.

    Args:
        train: ``(x, y)``: ``x`` ``[N, 3, H, W]`` float, normalised; ``y`` ``[N]`` long labels from 0.
        test: ``(x, y)`` likewise. Accuracy is computed here, after training, on all of it; fastai's
            validation set (it needs one) is only its first batch, so that fastai's per-epoch
            validation costs little of the measured time.
        weights: A safetensors file with timm's state_dict for ``arch`` (`real_weights.weights_file`);
            its classifier, if any, is dropped (fastai builds its own head).
        arch: A timm backbone, ``"timm/efficientnet_lite0"`` or ``"efficientnet_lite0"``.
        seed: Seeds fastai (Python's, NumPy's and torch's generators: the head's initialisation, the
            shuffling and dropout).
        epochs: The unfrozen epochs; fine_tune adds one frozen epoch before them.
        batch_size: The training batch.
        base_lr: fine_tune's ``base_lr`` (fastai's default): the head's peak rate in the frozen epoch;
            half of it for the head, and 1/100 of that for the body's first layers, once unfrozen.
        drop_last: Drop the last partial training batch each epoch (fastai's default for training).

    Returns:
        ``(accuracy, seconds)``: the test accuracy in [0, 1] and the wall-clock seconds of
        ``fine_tune`` (the frozen epoch, the unfrozen ones and fastai's small validation).

    Raises:
        ModuleNotFoundError: fastai is not installed (``pip install fastai`` or ``transferkit[bench]``).
        ValueError: Fewer training images than one batch while ``drop_last`` (fastai would take no step).
        RuntimeError: The body does not hold the weights file's tensors.
    """
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune and fit_one_cycle)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.torch_core import set_seed
    from fastai.vision.learner import vision_learner
    from safetensors.torch import load_file

    (x, y), (tx, ty) = train, test
    if drop_last and len(x) < batch_size:
        raise ValueError(f"{len(x)} training images and batch_size {batch_size}: drop_last leaves no batch")
    name = arch.removeprefix("timm/")
    cpu = torch.device("cpu")
    set_seed(seed)
    dls = DataLoaders(
        DataLoader(TensorDataset(x, y), bs=batch_size, shuffle=True, drop_last=drop_last, device=cpu),
        DataLoader(TensorDataset(tx[:batch_size], ty[:batch_size]), bs=batch_size, device=cpu),
        device=cpu,
    )
    learn: Learner = vision_learner(
        dls,
        name,
        n_out=int(y.max()) + 1,
        normalize=False,  # the tensors are normalised already
        loss_func=CrossEntropyLossFlat(),
        pretrained=True,  # fastai freezes the body; timm loads the file below, not a download
        pretrained_cfg_overlay={"file": str(weights)},
    )
    stem = load_file(str(weights))["conv_stem.weight"]
    if not torch.equal(learn.model[0].model.conv_stem.weight.detach(), stem):
        raise RuntimeError(f"fastai's body does not hold the weights in {weights}")
    started = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs, base_lr=base_lr)
    seconds = time.perf_counter() - started
    model = learn.model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(tx), 128):
            logits = model(tx[start : start + 128])
            correct += int((logits.argmax(1) == ty[start : start + 128]).sum())
    return correct / len(tx), seconds
