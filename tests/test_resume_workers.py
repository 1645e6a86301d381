"""Resuming is exact with DataLoader worker processes, whose augmentation draws random numbers.

A run interrupted after an epoch and resumed in a new process (here: new model, loaders and workers)
must end with the weights of the run that was never interrupted, with 0 or 2 loader workers and the
folder loaders' default (random) augmentation. The CLI test interrupts ``transferkit train`` with a real
SIGINT at two known epochs and resumes it each time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transferkit import Trainer, build_model
from transferkit.data import image_folder_loaders, make_shapes_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 training images of 2 classes at 32 px (64: the CLI's loaders start workers from 64 on), 8 val."""
    return make_shapes_folder(
        tmp_path_factory.mktemp("shapes"), num_classes=2, per_class={"train": 32, "val": 4}, image_size=32
    )


class InterruptAfter:
    """Ctrl-C right after epoch ``epoch``'s checkpoint is written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt


def _fit(folder: Path, ckpt: Path, workers: int, *, resume: bool = False, stop: int | None = None) -> dict:
    """A 4-epoch run in fresh objects (as a new process would build them): model, loaders, workers."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    model.freeze(policy="last_n", n=1)
    loaders = image_folder_loaders(folder, model, batch_size=16, image_size=32, num_workers=workers, seed=5)
    assert loaders["train"].num_workers == workers
    callbacks = [] if stop is None else [InterruptAfter(stop)]
    trainer = Trainer(
        model, epochs=4, lr=1e-2, checkpoint_dir=ckpt, resume=resume, seed=0, progress=False,
        restore_best=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(loaders)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run's, e.g. {different[:3]}"


@pytest.mark.parametrize("workers", [2, 0])
def test_fit_interrupted_and_resumed_ends_as_the_uninterrupted_run(folder: Path, tmp_path: Path, workers) -> None:
    reference = _fit(folder, tmp_path / "reference", workers)
    with pytest.raises(KeyboardInterrupt):
        _fit(folder, tmp_path / "cut", workers, stop=1)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    _assert_same(_fit(folder, tmp_path / "cut", workers, resume=True), reference)
