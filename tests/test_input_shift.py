"""The input shift: how far a training set lies from the pretraining data; far data fine-tunes its blocks
faster under a slow head."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from transferkit import Trainer, build_model
from transferkit.training import recipe
from transferkit.training.input_shift import SHIFT_IMAGES, input_shift
from transferkit.training.recipe import (
    FAR_FINETUNE_LR,
    FAR_HEAD_LR,
    FAR_SHIFT,
    finetune_rates,
    plan_recipe,
)


class Recorded(Dataset):
    """``count`` images with a random brightness (torch, numpy and ``random`` draw); remembers which
    indices were read."""

    def __init__(self, count: int) -> None:
        self.images, self.read = torch.randn(count, 3, 32, 32), []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.read.append(index)
        scale = float(torch.rand(())) + np.random.rand() + random.random()
        return self.images[index] * scale, index % 2


def test_the_shift_reads_evenly_spread_images_and_leaves_model_and_random_state_as_they_were(
    weights: Path,
) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    model.freeze("last_n", n=2)  # frozen blocks keep their norms in eval mode while the model trains
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = Recorded(200)
    rng = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    shift = input_shift(model, DataLoader(data, batch_size=10, shuffle=True))
    assert isinstance(shift, float) and shift > 0
    assert len(data.read) == SHIFT_IMAGES == len(set(data.read)) and (min(data.read), max(data.read)) == (
        0,
        199,
    )
    assert torch.equal(torch.random.get_rng_state(), rng[0])  # the run's data order and transforms are kept
    assert (np.random.get_state()[1] == rng[1]).all() and random.getstate() == rng[2]
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # running stats untouched
    assert not any(m._forward_hooks for m in model.modules())


def test_the_shift_batches_images_with_the_loaders_own_collate_fn(weights: Path) -> None:
    items = [{"image": torch.randn(3, 32, 32), "label": i % 2} for i in range(8)]

    def pairs(batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([b["image"] for b in batch]), torch.tensor([b["label"] for b in batch])

    model = build_model("resnet18", num_classes=2, pretrained=weights)
    assert input_shift(model, DataLoader(items, batch_size=4, collate_fn=pairs)) is not None
    assert input_shift(model, DataLoader(items, batch_size=4)) is None  # dict batches: no images to measure


def test_inputs_further_from_the_running_statistics_shift_more(weights: Path) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    images = torch.randn(40, 3, 32, 32)
    near = input_shift(model, DataLoader(TensorDataset(images, torch.zeros(40))))
    far = input_shift(model, DataLoader(TensorDataset(images * 4 + 3, torch.zeros(40))))
    assert near is not None and far is not None and far > 2 * near


def test_no_shift_without_a_map_style_dataset_or_batchnorm(weights: Path) -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(torch.randn(3, 32, 32), 0)] * 4)

    model = build_model("resnet18", num_classes=2, pretrained=weights)
    assert input_shift(model, DataLoader(Stream(), batch_size=2)) is None
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean = module.running_var = None  # norms that keep no statistics
    assert input_shift(model, DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4)))) is None


def test_far_data_trains_the_blocks_faster_and_the_head_slower() -> None:
    assert finetune_rates(10, FAR_SHIFT) == (FAR_FINETUNE_LR, FAR_HEAD_LR) == (3e-3, 3e-4)
    assert finetune_rates(10, FAR_SHIFT - 0.01) == finetune_rates(10, None) == (1e-3, None)
    assert finetune_rates(100, 0.3) == (3e-3, None) and finetune_rates(100, 0.7) == (3e-3, 3e-4)


def test_fit_on_far_data_runs_the_head_at_its_own_rate(
    weights: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread
) -> None:
    monkeypatch.setattr(recipe, "input_shift", lambda model, train: 0.7)
    data = DataLoader(TensorDataset(torch.randn(12, 3, 32, 32), torch.arange(12) % 2), batch_size=6)
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    trainer = Trainer(model, epochs=1, progress=False, device="cpu", seed=0)
    history = trainer.fit({"train": data})
    finetune = trainer.plan.phase("finetune")
    assert (finetune.lr, finetune.head_lr) == (3e-3, 3e-4)
    assert "epochs at lr 0.003 (the head at 0.0003)" in trainer.plan.describe(len(model.blocks))
    rates = {g["name"]: lr for g, lr in zip(trainer.optimizer.param_groups, trainer.base_lrs, strict=True)}
    head = {round(lr, 12) for name, lr in rates.items() if not name.startswith("backbone.")}
    blocks = {round(lr, 12) for name, lr in rates.items() if name.startswith("backbone.")}
    assert head == {3e-4} and blocks == {3e-3}
    assert history[-1]["phase"] == "finetune" and history[-1]["lr"] <= 3e-3
    given = plan_recipe("auto", model, data, epochs=1, lr=5e-4, has_val=False, cacheable=True)
    assert (given.phases[1].lr, given.phases[1].head_lr) == (5e-4, None)  # a given lr is kept for all


@pytest.mark.parametrize("lr", [None, 5e-4])
def test_few_images_measured_near_imagenet_fine_tune_a_sixth_of_the_blocks_others_a_third(
    weights: Path, monkeypatch: pytest.MonkeyPatch, lr: float | None
) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)  # 9 blocks
    blocks = {}
    for shift in (None, FAR_SHIFT - 0.01, FAR_SHIFT):
        monkeypatch.setattr(recipe, "input_shift", lambda model, train, shift=shift: shift)
        for per_class in (3, 10):
            data = DataLoader(
                TensorDataset(torch.zeros(2 * per_class, 3, 8, 8), torch.arange(2 * per_class) % 2)
            )
            plan = plan_recipe("auto", model, data, epochs=1, lr=lr, has_val=False, cacheable=True)
            blocks[shift, per_class] = plan.phases[1].blocks
    # no shift measured (a ViT) keeps a third (its rates are the near ones); from 10 per class half
    assert blocks == {(None, 3): 3, (None, 10): 4, (0.49, 3): 2, (0.49, 10): 4, (0.5, 3): 3, (0.5, 10): 4}
    assert len(model.trainable_blocks) == 9  # planning changed nothing
