"""Resuming is exact with DataLoader worker processes, whose augmentation draws random numbers.

A run interrupted after an epoch and resumed in a new process (here: new model, loaders and workers)
must end with the weights of the run that was never interrupted, with 0 or 2 loader workers and the
folder loaders' default (random) augmentation. The CLI test interrupts ``transferkit train`` with a real
SIGINT at two known epochs and resumes it each time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from cli_runner import run
from torch.utils.data import DataLoader, TensorDataset

import transferkit.data.loaders as loaders_module
from transferkit import Trainer, build_model
from transferkit.data import EpochSampler, image_folder_loaders, make_shapes_folder

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
    """A 3-epoch run in fresh objects (as a new process would build them): model, loaders, workers."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    model.freeze(policy="last_n", n=1)
    loaders = image_folder_loaders(folder, model, batch_size=16, image_size=32, num_workers=workers, seed=5)
    assert loaders["train"].num_workers == workers
    callbacks = [] if stop is None else [InterruptAfter(stop)]
    trainer = Trainer(
        model, epochs=3, lr=1e-2, checkpoint_dir=ckpt, resume=resume, seed=0, progress=False,
        restore_best=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(loaders)
    assert loaders["train"].sampler.state_dict() == {"epoch": 3}  # resumed: 1 from the checkpoint, 2 run
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run's: {different[:3]}"


@pytest.mark.parametrize("workers", [2, 0])
def test_fit_interrupted_and_resumed_ends_as_the_uninterrupted_run(
    folder: Path, tmp_path: Path, workers
) -> None:
    reference = _fit(folder, tmp_path / "reference", workers)
    with pytest.raises(KeyboardInterrupt):
        _fit(folder, tmp_path / "cut", workers, stop=0)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 0
    _assert_same(_fit(folder, tmp_path / "cut", workers, resume=True), reference)


# --------------------------------------------------------------------------------------- loaders
def _loader(folder: Path, workers: int):
    return image_folder_loaders(folder, batch_size=32, image_size=32, num_workers=workers, seed=5)["train"]


def test_a_new_loader_with_new_workers_repeats_any_epoch_with_any_worker_count(folder: Path) -> None:
    """The order and every augmented image follow from (seed, epoch, index) alone: persistent workers
    that ran epochs 0 and 1 give the same epoch 2 as new workers, or as the training process itself."""
    continued = _loader(folder, 2)
    epochs = [[images for images, _ in continued] for _ in range(3)]  # each pass is the next epoch
    assert not torch.equal(epochs[0][0], epochs[1][0])  # the augmentation changes every epoch
    assert continued.sampler.state_dict() == {"epoch": 3}
    for workers in (2, 0):
        fresh = _loader(folder, workers)
        fresh.sampler.load_state_dict({"epoch": 2})  # as a checkpoint written after epoch 1 restores it
        assert all(torch.equal(a, b) for (a, _), b in zip(fresh, epochs[2], strict=True))


@pytest.mark.parametrize("kind", ["segmentation", "detection", "detection with mosaic"])
def test_segmentation_and_detection_loaders_repeat_an_epoch_in_new_workers(kind: str, tmp_path: Path) -> None:
    from transferkit.data import (
        detection_folder_loaders,
        make_shapes_detection_folder,
        make_shapes_segmentation_folder,
        segmentation_folder_loaders,
    )

    if kind == "segmentation":
        root = make_shapes_segmentation_folder(tmp_path, per_split={"train": 12}, image_size=32)
        build = segmentation_folder_loaders
    else:  # a mosaic draws its other images and its centre from the sample's seed too
        root = make_shapes_detection_folder(tmp_path, per_split={"train": 12}, image_size=32)
        build = partial(detection_folder_loaders, mosaic=0.5 if "mosaic" in kind else 0.0)

    def loader():
        return build(root, batch_size=4, image_size=32, num_workers=2, seed=1)["train"]

    continued = loader()
    epochs = [[images for images, _ in continued] for _ in range(2)]
    fresh = loader()
    fresh.sampler.load_state_dict({"epoch": 1})
    assert all(torch.equal(a, b) for (a, _), b in zip(fresh, epochs[1], strict=True))


def test_shards_under_torchrun_keep_the_order_and_the_seeds() -> None:
    from transferkit.training.distributed import shard_loader

    dataset = TensorDataset(torch.arange(10))
    loader = DataLoader(dataset, batch_size=2, sampler=EpochSampler(len(dataset), seed=1))
    shards = [shard_loader(loader, rank=r, world_size=3, seed=0, train=True).sampler for r in range(3)]
    for sampler in (loader.sampler, *shards):
        sampler.set_epoch(4)
    full = [(int(i), i.seed) for i in loader.sampler]
    parts = [[(int(i), i.seed) for i in shard] for shard in shards]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to equal lengths, as DistributedSampler does
    padded = full + full[:2]
    assert parts == [padded[r::3] for r in range(3)]
    with pytest.raises(ValueError, match=r"rank is in \[0, world_size=3\), got 3"):
        loader.sampler.shard(3, 3)
    with pytest.raises(ValueError, match="num_samples is a dataset length >= 0, got -1"):
        EpochSampler(-1)


# ------------------------------------------------------------------------------ transferkit train
# A CLI run in a new interpreter with 2 loader workers on any machine (the CLI picks workers from the
# cores), which sends itself SIGINT (Ctrl-C) right after the checkpoint of the 0-based epoch STOP_AT.
DRIVER = """
import os, signal, sys
import transferkit.data.loaders as loaders
import transferkit.training.trainer as trainer_module
from transferkit import cli

loaders.usable_cpus = lambda: 2
assert loaders.default_num_workers(64) == 2
stop_at, emit = int(os.environ["STOP_AT"]), trainer_module.Callbacks.emit

def interrupting(callbacks, event, trainer):
    emit(callbacks, event, trainer)
    if event == "on_epoch_end" and trainer.epoch == stop_at:
        os.kill(os.getpid(), signal.SIGINT)

trainer_module.Callbacks.emit = interrupting
sys.exit(cli.main(sys.argv[1:]))
"""


def _cli(*argv: object, stop_at: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "STOP_AT": str(stop_at)}
    command = [sys.executable, "-c", DRIVER, *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


@pytest.mark.slow
def test_cli_train_sigint_twice_then_resume_ends_bit_identical(
    folder: Path, tmp_path: Path, monkeypatch
) -> None:
    """3 epochs with 2 workers and the default augmentation; Ctrl-C after epoch 1, and after epoch 2 of the
    resumed run."""
    train = ["train", "--data", folder, "--backbone", "resnet18", "--pretrained", "false",
             "--freeze", "last_n:1", "--epochs", 3, "--batch-size", 16, "--image-size", 32,
             "--seed", 3, "--device", "cpu"]  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "run"
    monkeypatch.setattr(loaders_module, "usable_cpus", lambda: 2)  # 2 workers here too, as in _cli
    done = run(*train, "--out", reference)  # in this process: saves an interpreter start
    assert done.code == 0, done.err
    first = _cli(*train, "--out", out, stop_at=0)
    assert first.returncode == 130 and "interrupted after 1 of 3 epochs" in first.stderr, first.stderr
    second = _cli("train", "--resume", "--out", out, stop_at=1)
    assert second.returncode == 130 and "interrupted after 2 of 3 epochs" in second.stderr, second.stderr
    last = run("train", "--resume", "--out", out)
    assert last.code == 0, last.err
    history, expected = (json.loads((d / "history.json").read_text()) for d in (out, reference))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(history) == strip(expected)  # every epoch's losses, not only the kept (best) weights
    _assert_same(_weights(out), _weights(reference))
