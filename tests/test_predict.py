"""Class names that travel with the model, ``model.predict``, and 1-channel (grayscale) data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from transferkit import Trainer, build_model, load_model
from transferkit.data import SyntheticShapes, image_folder_loaders, make_shapes_folder
from transferkit.viz import show_predictions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_folder(root, num_classes=2, per_class={"train": 2, "val": 2}, image_size=32)


# -------------------------------------------------------------------------------------- classes


def test_classes_are_checked_kept_in_config_and_saved(tmp_path: Path) -> None:
    model = build_model("resnet18", num_classes=2, classes=("ants", "bees"), pretrained=False)
    assert model.classes == ["ants", "bees"] and model.config["classes"] == ["ants", "bees"]
    assert build_model(**{**model.config, "pretrained": False}).classes == ["ants", "bees"]
    model.save(tmp_path)
    assert load_model(tmp_path).classes == ["ants", "bees"]

    unnamed = build_model("resnet18", num_classes=3, pretrained=False)
    assert unnamed.classes == ["0", "1", "2"] and unnamed.config["classes"] is None
    with pytest.raises(ValueError, match="classes has 1 name.* num_classes=2"):
        build_model("resnet18", num_classes=2, classes=["ants"], pretrained=False)
    with pytest.raises(ValueError, match=r"\['a'\] more than once"):
        unnamed.classes = ["a", "a", "b"]
    with pytest.raises(TypeError, match="a list of names"):
        unnamed.classes = "abc"


def test_fit_fills_classes_from_the_train_data_only_when_unknown_and_fitting() -> None:
    shapes = SyntheticShapes(4, image_size=32, num_classes=3)
    model = build_model("resnet18", num_classes=3, pretrained=False)
    model.freeze()
    Trainer(model, epochs=1, progress=False).fit(DataLoader(Subset(shapes, range(4)), batch_size=4))
    assert model.classes == ["circle", "square", "triangle"]  # through the Subset

    named = build_model("resnet18", num_classes=3, classes=["a", "b", "c"], pretrained=False)
    named.freeze()
    Trainer(named, epochs=1, progress=False).fit(DataLoader(shapes, batch_size=4))
    assert named.classes == ["a", "b", "c"]  # given names win

    wider = build_model("resnet18", num_classes=4, pretrained=False)
    with pytest.raises(ValueError, match=r"has 3 class\(es\) .* build the model with num_classes=3"):
        Trainer(wider, epochs=1, progress=False).fit(DataLoader(shapes, batch_size=4))
    assert wider.classes == ["0", "1", "2", "3"]  # 3 names for 4 outputs: refused, none taken


def test_prediction_grids_title_images_with_the_model_classes() -> None:
    model = build_model("resnet18", num_classes=2, classes=["ants", "bees"], pretrained=False)
    figure = show_predictions(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))])
    titles = " ".join(ax.get_title() for ax in figure.axes)
    assert "true: ants" in titles and "true: bees" in titles


# -------------------------------------------------------------------------------------- predict


def test_predict_a_file_gives_names_and_probabilities(folder: Path) -> None:
    model = build_model("resnet18", num_classes=2, classes=["circle", "square"], pretrained=False)
    model.train()
    image = next((folder / "val" / "circle").iterdir())
    answer = model.predict(str(image))
    assert [name for name, _ in answer] in (["circle", "square"], ["square", "circle"])
    probabilities = [p for _, p in answer]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1)
    assert model.training  # the mode is restored
    assert model.predict(image, top_k=1) == answer[:1]  # a Path, top_k

    with Image.open(image) as pil:
        several = model.predict([image, pil.convert("RGB")], top_k=1)
    assert several == [answer[:1], answer[:1]]  # same preprocessing for a file and its PIL image
    assert len(model.predict(torch.randn(3, 3, 64, 64))) == 3  # a preprocessed batch
    with pytest.raises(TypeError, match="image 0 is of type int; predict takes a file path"):
        model.predict(7)
    with pytest.raises(OSError, match="cannot read image"):
        model.predict(folder / "missing.jpg")


def test_predict_segmentation_returns_masks_at_the_image_size() -> None:
    model = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=3, pretrained=False)
    mask = model.predict(Image.new("RGB", (50, 40)))
    assert mask.shape == (40, 50) and mask.dtype == torch.int64
    assert 0 <= int(mask.min()) and int(mask.max()) < 3


# ------------------------------------------------------------------------------------ grayscale


def test_a_one_channel_model_gets_one_channel_batches(folder: Path, tmp_path: Path) -> None:
    gray = tmp_path / "gray"
    for path in folder.rglob("*.jpg"):
        target = gray / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").save(target)
    model = build_model("resnet18", num_classes=2, in_chans=1, pretrained=False)
    loaders = image_folder_loaders(gray, model, batch_size=2, image_size=32)
    for loader in loaders.values():
        images, _ = next(iter(loader))
        assert images.shape == (2, 1, 32, 32)
    normalise = loaders["val"].dataset.transform.transforms[-2]
    assert len(normalise.mean) == 1 and normalise.mean[0] == pytest.approx(sum(model.data_config["mean"]) / 3)
    history = Trainer(model, epochs=1, progress=False).fit(loaders)
    assert len(history) == 1 and model.classes == ["circle", "square"]
    assert len(model.predict(next((gray / "val" / "circle").iterdir()))) == 2
