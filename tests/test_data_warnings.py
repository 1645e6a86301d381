"""``fit`` warns, once, about data that trains without an error but measures or learns less than it seems:
a val split lacking classes, and inputs so small that the backbone's coarsest feature map is 1x1."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import build_model
from transferkit.data import (
    detection_folder_loaders,
    image_folder_loaders,
    make_shapes_detection_folder,
    make_shapes_folder,
)
from transferkit.training import Trainer


def _fit_warnings(model, loaders) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(model, epochs=1, lr=1e-3, progress=False, seed=0).fit(loaders)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _frozen_classifier(num_classes: int):
    model = build_model("resnet18", num_classes=num_classes, pretrained=False)
    model.freeze()
    return model


# --------------------------------------------------------------------------------- val lacking classes
def test_a_val_split_lacking_classes_is_named_once(tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path, num_classes=4, per_class={"train": 1, "val": 1}, image_size=32)
    loaders = image_folder_loaders(root, batch_size=4, image_size=32, augment=False)
    assert _fit_warnings(_frozen_classifier(4), loaders) == []  # every class in val: nothing to say
    for name in ("square", "triangle"):
        shutil.rmtree(root / "val" / name)
    loaders = image_folder_loaders(root, batch_size=4, image_size=32, augment=False)
    messages = [m for m in _fit_warnings(_frozen_classifier(4), loaders) if "val split" in m]
    assert messages == [
        "the val split holds nothing of 2 of the 4 classes ('square', 'triangle'); the val metrics do not "
        "measure those classes: move or add some of their images into val"
    ]


def test_a_detection_val_split_without_boxes_of_a_class_is_named(tmp_path: Path) -> None:
    root = make_shapes_detection_folder(
        tmp_path, num_classes=3, per_split={"train": 2, "val": 1}, image_size=64
    )
    loaders = detection_folder_loaders(root, batch_size=2, image_size=64, augment=False)
    present = {int(v) for v in loaders["val"].dataset.samples[0].labels}
    missing = [name for i, name in enumerate(loaders["train"].dataset.classes) if i not in present]
    assert missing, "the fixture's one val image should lack a class"
    model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=3, pretrained=False)
    messages = [m for m in _fit_warnings(model, loaders) if "val split" in m]
    assert len(messages) == 1 and f"nothing of {len(missing)} of the 3 classes" in messages[0]
    assert all(repr(name) in messages[0] for name in missing)


# ------------------------------------------------------------------------------------------ tiny inputs
def test_inputs_smaller_than_the_coarsest_stride_warn_once() -> None:
    def fit(side: int) -> list[str]:
        images = torch.randn(6, 3, side, side)
        loader = DataLoader(TensorDataset(images, torch.arange(6) % 2), batch_size=3)
        model = build_model("resnet18", num_classes=2, pretrained=False)
        return [m for m in _fit_warnings(model, loader) if "coarsest feature map" in m]

    assert fit(8) == [
        "inputs of 8x8 px leave torchvision/resnet18's coarsest feature map (stride 32 px) at 1x1, so its "
        "deepest layers see mostly padding and learn little; use images of at least 32 px (image_size= in "
        "the folder loaders, --image-size in transferkit train)"
    ]
    assert fit(32) == []  # one whole cell of the coarsest map: a classifier pools it as it would a larger one


def test_detection_at_24_px_warns_with_the_size_that_gives_a_2x2_map(tmp_path: Path) -> None:
    root = make_shapes_detection_folder(tmp_path, per_split={"train": 2}, image_size=64)
    loaders = detection_folder_loaders(root, batch_size=2, image_size=24, augment=False)
    model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=3, pretrained=False)
    messages = [m for m in _fit_warnings(model, loaders) if "coarsest feature map" in m]
    assert len(messages) == 1, messages
    assert messages[0].startswith(
        "inputs of 24x24 px leave torchvision/resnet18's coarsest feature map (stride 32 px) at 1x1"
    )
    assert "detection head to place boxes" in messages[0] and "at least 64 px" in messages[0]
