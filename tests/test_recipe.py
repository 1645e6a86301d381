"""The default recipe: a pretrained classifier nobody froze trains its top third; any choice is kept."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model, load_model
from transferkit.cli import parse_freeze
from transferkit.cli.options import UsageError
from transferkit.cli.resume import TRAIN_DEFAULTS, resumed_arguments
from transferkit.training.recipe import (
    apply_default_recipe,
    default_lr,
    default_trainable_blocks,
    uses_default_recipe,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 weights file from a randomly initialised model: 'pretrained' as far as the code knows."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    return path


def test_pretrained_classifier_never_frozen_trains_its_top_third(weights: Path) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    assert uses_default_recipe(model) and len(model.trainable_blocks) == 9
    Trainer(model, progress=False, device="cpu")
    assert model.trainable_blocks == ["layer3.1", "layer4.0", "layer4.1"]
    assert model.freeze_state()["policy"] == "last_n" and model.freeze_state()["n"] == 3
    frozen = model.backbone.get_submodule("body.layer1.0.bn1")
    model.train()
    assert not frozen.training and not frozen.weight.requires_grad  # frozen as by model.freeze itself


def test_history_counts_the_default_trainable_blocks(weights: Path, one_torch_thread) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])), batch_size=4)
    history = Trainer(model, epochs=1, progress=False, device="cpu").fit(data)
    assert history[0]["trainable_blocks"] == 3


@pytest.mark.parametrize(
    ("choose", "trainable"),
    [
        (lambda m: m.freeze("last_n", n=4), 4),
        (lambda m: m.freeze(), 0),
        (lambda m: m.unfreeze(), 9),  # the way to fine-tune everything
        (lambda m: m.freeze("gradual", n=1, step=2), 1),
        (lambda m: m.load_freeze_state({"policy": "none"}), 9),
    ],
)
def test_a_freeze_the_user_chose_is_never_overridden(weights: Path, choose, trainable: int) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    choose(model)
    assert not uses_default_recipe(model)
    Trainer(model, progress=False, device="cpu")
    assert len(model.trainable_blocks) == trainable


def test_random_weights_and_other_tasks_train_everything(weights: Path) -> None:
    random_init = build_model("resnet18", num_classes=2, pretrained=False)
    segmenter = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=3, pretrained=weights)
    for model in (random_init, segmenter):
        assert not apply_default_recipe(model)
        Trainer(model, progress=False, device="cpu")
        assert len(model.trainable_blocks) == 9


def test_saved_models_keep_their_freeze_state(weights: Path, tmp_path: Path) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    model.unfreeze()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    Trainer(loaded, progress=False, device="cpu")
    assert len(loaded.trainable_blocks) == 9


def test_default_trainable_blocks_are_a_third_or_with_more_data_half() -> None:
    assert [default_trainable_blocks(b) for b in (2, 3, 9, 10, 17)] == [1, 1, 3, 3, 6]
    assert [default_trainable_blocks(17, n) for n in (None, 3, 9.9, 10, 50)] == [6, 6, 6, 8, 8]
    assert default_trainable_blocks(9, 10) == 4


def test_fit_decides_again_from_the_images_per_class(weights: Path, one_torch_thread) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    trainer = Trainer(model, epochs=1, progress=False, device="cpu")
    assert len(model.trainable_blocks) == 3  # the data is not known yet: the small-data third
    data = TensorDataset(torch.randn(20, 3, 32, 32), torch.arange(20) % 2)  # 10 images per class
    history = trainer.fit(DataLoader(data, batch_size=10))
    assert history[0]["trainable_blocks"] == 4 and uses_default_recipe(model)  # still the recipe's
    model.freeze("last_n", n=2)  # the user's choice from here on
    Trainer(model, epochs=1, progress=False, device="cpu").fit(DataLoader(data, batch_size=10))
    assert len(model.trainable_blocks) == 2


def test_cli_freeze_auto_is_the_default_recipe(weights: Path) -> None:
    spec = parse_freeze("auto")
    assert (spec.policy, spec.kwargs, spec.text) == ("auto", {}, "auto")
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    spec.apply(model)
    assert len(model.trainable_blocks) == 3
    chosen = build_model("resnet18", num_classes=2, pretrained=weights)
    parse_freeze("none").apply(chosen)
    Trainer(chosen, progress=False, device="cpu")
    assert len(chosen.trainable_blocks) == 9


def test_default_lr_is_higher_below_five_images_per_class() -> None:
    assert [default_lr(n) for n in (None, 1, 4.9, 5, 50)] == [1e-3, 1e-2, 1e-2, 1e-3, 1e-3]


def _head_lr(history: list[dict]) -> float:
    return history[0]["lr"]


@pytest.mark.parametrize(("per_class", "lr"), [(3, 1e-2), (5, 1e-3)])
def test_fit_without_an_lr_trains_few_shot_data_faster(
    weights: Path, one_torch_thread, per_class, lr
) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    data = TensorDataset(torch.randn(2 * per_class, 3, 32, 32), torch.arange(2 * per_class) % 2)
    trainer = Trainer(model, epochs=2, progress=False, device="cpu", layer_decay=0.5)
    history = trainer.fit(DataLoader(data, batch_size=10))
    assert _head_lr(history) == pytest.approx(lr)
    given = Trainer(build_model("resnet18", num_classes=2, pretrained=weights), lr=lr, layer_decay=0.5)
    assert trainer.base_lrs == pytest.approx(given.base_lrs)  # every group scaled, the decay kept
    assert history[1]["lr"] < history[0]["lr"]  # the cosine schedule starts from the new rate


def test_an_lr_given_or_a_freeze_chosen_keeps_its_rate(weights: Path, one_torch_thread) -> None:
    few = DataLoader(TensorDataset(torch.randn(6, 3, 32, 32), torch.arange(6) % 2), batch_size=6)
    given = Trainer(
        build_model("resnet18", num_classes=2, pretrained=weights), epochs=1, lr=1e-3, progress=False
    )
    assert _head_lr(given.fit(few)) == pytest.approx(1e-3)
    chosen = build_model("resnet18", num_classes=2, pretrained=weights)
    chosen.freeze("last_n", n=3)
    assert _head_lr(Trainer(chosen, epochs=1, progress=False).fit(few)) == pytest.approx(1e-3)
    random = build_model("resnet18", num_classes=2, pretrained=False)
    assert _head_lr(Trainer(random, epochs=1, progress=False).fit(few)) == pytest.approx(1e-3)


def test_a_second_fit_on_more_data_starts_its_schedule_at_the_usual_rate(
    weights: Path, one_torch_thread
) -> None:
    trainer = Trainer(build_model("resnet18", num_classes=2, pretrained=weights), epochs=2, progress=False)
    few = TensorDataset(torch.randn(6, 3, 32, 32), torch.arange(6) % 2)  # 3 per class: 1e-2
    more = TensorDataset(torch.randn(20, 3, 32, 32), torch.arange(20) % 2)  # 10 per class: 1e-3
    assert _head_lr(trainer.fit(DataLoader(few, batch_size=6))) == pytest.approx(1e-2)
    history = trainer.fit(DataLoader(more, batch_size=10))
    assert _head_lr(history) == pytest.approx(1e-3)  # not the first fit's rate, kept by the schedule
    assert history[1]["lr"] == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 4))
    )  # cosine, step 2 of 4


def test_resume_with_an_lr_names_the_default_the_run_had(tmp_path: Path) -> None:
    (tmp_path / "transferkit.json").write_text(json.dumps({"backbone": "resnet18", "data": "d", "lr": None}))
    given = argparse.Namespace(**{**dict.fromkeys(TRAIN_DEFAULTS), "lr": 1e-3})
    with pytest.raises(UsageError, match=r"--lr 0.001 \(the run has the default\)"):
        resumed_arguments(tmp_path, given)
