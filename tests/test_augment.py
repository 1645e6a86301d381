"""Augmentation choices: each runs, masks stay aligned with their images, mixup / cutmix train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit import Trainer, build_model
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    build_segmentation_transforms,
    image_folder_loaders,
    make_shapes_folder,
    make_shapes_segmentation_folder,
    segmentation_folder_loaders,
)
from transferkit.data.augment import AUGMENTATIONS, MixCollate, parse_augment

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_folder(root, num_classes=3, per_class={"train": 8, "val": 4}, image_size=SIZE)


@pytest.mark.parametrize("augment", [*AUGMENTATIONS, "trivialaugment+randomerasing", True, False])
def test_every_choice_gives_normalised_batches(folder: Path, augment) -> None:
    loaders = image_folder_loaders(folder, data_config=DEFAULT_DATA_CONFIG, image_size=SIZE, augment=augment)
    images, labels = next(iter(loaders["train"]))
    assert images.shape[1:] == (3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.shape == (len(images),)
    assert images.isfinite().all()


def test_unknown_or_conflicting_choices_are_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="unknown augment 'randaug'.*trivialaugment"):
        image_folder_loaders(folder, augment="randaug")
    with pytest.raises(ValueError, match="combines 'none'"):
        parse_augment("none+randaugment")
    assert parse_augment("randomerasing+light") == ("light", "randomerasing")


def test_segmentation_refuses_policies_that_would_not_move_the_mask(tmp_path: Path) -> None:
    root = make_shapes_segmentation_folder(tmp_path, per_split={"train": 2}, image_size=SIZE)
    with pytest.raises(ValueError, match=r"\['randaugment'\] would move the image's pixels but not its mask"):
        segmentation_folder_loaders(root, augment="randaugment")
    images, masks = next(iter(segmentation_folder_loaders(root, augment="light", image_size=SIZE)["train"]))
    assert images.shape[-2:] == masks.shape[-2:] == (SIZE, SIZE)


def test_the_mask_moves_with_its_image() -> None:
    # An image whose red channel is the mask's class times 60: after any crop, resize and flip, the
    # transformed red channel must still tell the transformed mask's class at every pixel.
    mask = np.repeat(np.arange(64)[None, :] // 16, 64, axis=0).astype(np.uint8)  # 4 stripes, left to right
    red = (mask * 60).astype(np.uint8)
    image = Image.fromarray(np.stack([red, np.zeros_like(red), np.zeros_like(red)], -1))
    config = {"input_size": (3, SIZE, SIZE), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    transform = build_segmentation_transforms(config, train=True, image_size=SIZE)
    torch.manual_seed(0)
    for _ in range(10):
        x, y = transform(image, Image.fromarray(mask))
        recovered = (x[0] * 255 / 60).round().long()
        agree = (recovered == y).float().mean()
        assert agree > 0.85, f"only {agree:.0%} of pixels agree"  # bilinear blends the class borders
        assert (recovered == y.flip(-1)).float().mean() < 0.6  # a mask flipped apart from its image fails


@pytest.mark.parametrize("mix", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_mixup_and_cutmix_give_probability_targets(folder: Path, mix: dict[str, float]) -> None:
    loaders = image_folder_loaders(
        folder, data_config=DEFAULT_DATA_CONFIG, image_size=SIZE, augment=False, **mix
    )
    images, targets = next(iter(loaders["train"]))
    assert targets.shape == (len(images), 3) and torch.allclose(targets.sum(1), torch.ones(len(images)))
    assert (targets.max(1).values < 1).any()  # some samples really are mixed
    assert next(iter(loaders["val"]))[1].dtype == torch.int64  # validation sees plain labels


def test_mixed_batches_train_with_falling_loss(folder: Path) -> None:
    loaders = image_folder_loaders(
        folder,
        data_config=DEFAULT_DATA_CONFIG,
        image_size=SIZE,
        batch_size=8,
        augment=False,
        mixup=0.4,
        cutmix=1.0,
    )
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", num_classes=3, pretrained=False)
    model.freeze()
    history = Trainer(model, epochs=4, lr=1e-2, progress=False, seed=0).fit(loaders)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_mix_collate_refuses_no_mixing() -> None:
    with pytest.raises(ValueError, match="at least one > 0"):
        MixCollate(num_classes=3)


def test_label_smoothing_raises_the_loss_floor(folder: Path) -> None:
    loaders = image_folder_loaders(folder, data_config=DEFAULT_DATA_CONFIG, image_size=SIZE, augment=False)
    losses = []
    for smoothing in (0.0, 0.3):
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=3, pretrained=False)
        trainer = Trainer(model, epochs=1, progress=False, label_smoothing=smoothing)
        losses.append(trainer.evaluate(loaders["val"])["loss"])
    assert losses[1] != pytest.approx(losses[0])  # the same model, another loss
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        Trainer(model, label_smoothing=1.0)
