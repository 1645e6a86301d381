"""Loaders from arrays and CSV tables, the val_pct split, and numpy images in ``model.predict``."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit.data.arrays
import transferkit.data.pixels
import transferkit.data.split
from transferkit import Trainer, build_model
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    array_loaders,
    csv_loaders,
    image_folder_loaders,
    stratified_split,
)
from transferkit.preprocessing import loader_data_config, resolve_data_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIDE = 32


def _images(count: int = 12, seed: int = 0, side: int = 40) -> np.ndarray:
    """``[count, side, side, 3]`` uint8 images with structure (a bright square) so crops differ."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (count, side, side, 3), dtype=np.uint8)
    for i in range(count):
        x, y = rng.integers(0, side // 2, 2)
        images[i, y : y + side // 3, x : x + side // 3] = 255
    return images


def _labels(count: int = 12, classes: int = 2) -> np.ndarray:
    return np.arange(count) % classes


def _val_batch(loaders: dict) -> torch.Tensor:
    return torch.cat([x for x, _ in loaders["val"]])


def _folder(root: Path, images: np.ndarray, labels: np.ndarray, names=("cat", "dog")) -> list[str]:
    """Write the images as PNGs under ``root/<class>/``; return their paths relative to ``root``."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        relative = f"{names[label]}/{i:03d}.png"
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative)
        paths.append(relative)
    return paths


# ------------------------------------------------------------------------------------------ arrays


def test_every_layout_and_pixel_type_gives_the_folder_loaders_preprocessing(tmp_path: Path) -> None:
    images, labels = _images(), _labels()
    _folder(tmp_path / "val", images, labels, names=("0", "1"))
    _folder(tmp_path / "train", images, labels, names=("0", "1"))
    folder = image_folder_loaders(tmp_path, image_size=SIDE, batch_size=4, num_workers=0)
    files = _val_batch(folder)  # same files, sorted by class: the even indices first
    order = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)])
    kwargs = {"image_size": SIDE, "batch_size": 4, "num_workers": 0}
    for given in (
        images,  # NHWC uint8
        images.astype(np.float32) / 255,  # NHWC float in [0, 1]
        torch.from_numpy(images).permute(0, 3, 1, 2),  # NCHW uint8 tensor
        torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255,  # NCHW float64 tensor
    ):
        loaders = array_loaders(given, labels, **kwargs, val=(given[order], labels[order]))
        assert torch.equal(_val_batch(loaders), files), type(given)
    grey = array_loaders(images[..., 0], labels, **kwargs, val=(images[order, :, :, 0], labels[order]))
    assert grey["val"].dataset.layout == "NHW"
    x = _val_batch(grey)
    assert x.shape == files.shape and torch.allclose(x[:, 0] * 0.229 + 0.485, x[:, 1] * 0.224 + 0.456)


def test_layouts_that_do_not_fit_are_refused_naming_the_fix() -> None:
    labels = _labels(4)
    with pytest.raises(ValueError, match=r"could be \[N, H, W, C\] or \[N, C, H, W\]; pass layout="):
        array_loaders(np.zeros((4, 3, 8, 3), np.uint8), labels)
    loaders = array_loaders(np.zeros((4, 3, 8, 3), np.uint8), labels, layout="NCHW", image_size=SIDE)
    assert next(iter(loaders["train"]))[0].shape == (4, 3, SIDE, SIDE)
    with pytest.raises(ValueError, match="no channel axis of size 1, 3 or 4"):
        array_loaders(np.zeros((4, 8, 8, 5), np.uint8), labels)
    with pytest.raises(ValueError, match="one image\\? add the batch axis"):
        array_loaders(np.zeros((8, 8), np.uint8), labels)
    with pytest.raises(ValueError, match=r"float images span 255\.\.255; float pixels must lie in \[0, 1\]"):
        array_loaders(np.full((4, 8, 8), 255.0), labels)
    with pytest.raises(ValueError, match="NaN"):
        array_loaders(np.full((4, 8, 8), np.nan, np.float32), labels)
    with pytest.raises(ValueError, match=r"int16 images span 1000\.\.1000; integer pixels must lie in 0"):
        array_loaders(np.full((4, 8, 8), 1000, np.int16), labels)
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        array_loaders(np.zeros((4, 8, 8), np.uint8), labels.astype(float))
    with pytest.raises(ValueError, match=r"one class index per image: \[4\]"):
        array_loaders(np.zeros((4, 8, 8), np.uint8), labels[:3])
    with pytest.raises(ValueError, match="labels hold 1 but classes names 1"):
        array_loaders(np.zeros((4, 8, 8), np.uint8), labels, classes=["only"])


def test_array_loaders_declare_their_config_and_give_the_trainer_their_classes() -> None:
    images, labels = _images(8), _labels(8)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    model.freeze()
    loaders = array_loaders(images, labels, model, classes=["cat", "dog"], val_pct=0.25, image_size=SIDE)
    expected = resolve_data_config(model.data_config, SIDE)
    assert loader_data_config(loaders["train"]) == loader_data_config(loaders["val"]) == expected
    Trainer(model, epochs=1, progress=False, device="cpu").fit(loaders)
    assert model.classes == ["cat", "dog"] and model.data_config["input_size"] == (3, SIDE, SIDE)


def test_augment_options_reach_the_train_split_only() -> None:
    images, labels = _images(4), _labels(4)
    kwargs = {"data_config": DEFAULT_DATA_CONFIG, "image_size": SIDE, "num_workers": 0}
    plain = array_loaders(images, labels, augment=False, val=(images, labels), **kwargs)
    assert torch.equal(plain["train"].dataset[1][0], plain["val"].dataset[1][0])
    # a full-size crop without flips is the plain resize: the random parts are switched off
    fixed = array_loaders(images, labels, flip=False, crop_scale=(1.0, 1.0), **kwargs)
    torch.manual_seed(3)
    first = fixed["train"].dataset[0][0]
    torch.manual_seed(4)
    assert torch.allclose(first, fixed["train"].dataset[0][0])
    flipping = array_loaders(images, labels, flip=True, crop_scale=(1.0, 1.0), **kwargs)["train"].dataset
    draws = {tuple(flipping[0][0][0, 0, :3].tolist()) for _ in range(12)}
    assert len(draws) == 2  # flipped or not
    with pytest.raises(ValueError, match="crop_scale"):
        array_loaders(images, labels, crop_scale=(0.0, 1.0), **kwargs)
    with pytest.raises(TypeError, match="flip"):
        array_loaders(images, labels, flip="no", **kwargs)
    with pytest.raises(ValueError, match="unknown augment"):
        array_loaders(images, labels, augment="sharpen", **kwargs)


def test_array_and_csv_epochs_repeat_in_new_workers(tmp_path: Path) -> None:
    """Their train loaders shuffle by the EpochSampler too: epoch 1 of a fresh loader with 2 workers,
    resumed from the sampler's state, is the in-process run's epoch 1, image for image."""
    images, labels = _images(8), _labels(8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    table = {"path": [f"{i}.png" for i in range(8)], "label": labels.tolist()}
    kwargs = {"data_config": DEFAULT_DATA_CONFIG, "image_size": SIDE, "batch_size": 4, "seed": 5}
    builders = [
        lambda workers: array_loaders(images, labels, num_workers=workers, **kwargs)["train"],
        lambda workers: csv_loaders(table, root=tmp_path, num_workers=workers, **kwargs)["train"],
    ]
    for build in builders:
        here = build(0)
        epochs = [[batch for batch, _ in here] for _ in range(2)]
        assert not torch.equal(epochs[0][0], epochs[1][0])  # a new order or augmentation each epoch
        fresh = build(2)
        fresh.sampler.load_state_dict({"epoch": 1})
        assert all(torch.equal(a, b) for (a, _), b in zip(fresh, epochs[1], strict=True))


# ---------------------------------------------------------------------------------------- val_pct


def test_val_pct_is_stratified_seeded_disjoint_and_complete() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(17)) and not set(train) & set(val)
    assert [int((labels[val] == c).sum()) for c in range(3)] == [2, 1, 1]  # round(n * 0.2), at least 1
    assert stratified_split(labels, 0.2, seed=0) == (train, val)
    assert stratified_split(labels, 0.2, seed=1) != (train, val)
    assert stratified_split(labels, 0.9, seed=0)[0] != []  # every class keeps a training sample
    with pytest.raises(ValueError, match="class 'b' has 1 sample; val_pct needs at least 2 per class"):
        stratified_split([0, 0, 1], 0.5, classes=["a", "b"])
    for bad in (0, 1, 20, -0.1):
        with pytest.raises(ValueError, match=r"0 < val_pct < 1 \(0.2 for 20%\)"):
            stratified_split(labels, bad)


def test_array_loaders_split_with_val_pct() -> None:
    images, labels = _images(20), _labels(20)
    loaders = array_loaders(images, labels, val_pct=0.2, seed=5, image_size=SIDE, num_workers=0)
    train, val = loaders["train"].dataset, loaders["val"].dataset
    assert (len(train), len(val)) == (16, 4) and not set(train.indices) & set(val.indices)
    assert sorted(val.targets) == [0, 0, 1, 1]
    again = array_loaders(images, labels, val_pct=0.2, seed=5, image_size=SIDE)
    assert again["val"].dataset.indices == val.indices
    with pytest.raises(ValueError, match="either val=.* or val_pct"):
        array_loaders(images, labels, val_pct=0.2, val=(images, labels))


def test_image_folder_loaders_split_a_folder_without_train_and_val(tmp_path: Path) -> None:
    images, labels = _images(12), _labels(12)
    _folder(tmp_path / "flat", images, labels)
    loaders = image_folder_loaders(tmp_path / "flat", val_pct=0.25, image_size=SIDE, num_workers=0)
    train, val = loaders["train"].dataset, loaders["val"].dataset
    assert train.classes == val.classes == ["cat", "dog"]
    train_files, val_files = {p for p, _ in train.samples}, {p for p, _ in val.samples}
    assert (len(train_files), len(val_files)) == (8, 4) and not train_files & val_files
    assert sorted(val.targets) == [0, 0, 1, 1]
    assert next(iter(loaders["val"]))[0].shape[1:] == (3, SIDE, SIDE)
    _folder(tmp_path / "split" / "train", images, labels)
    assert len(image_folder_loaders(tmp_path / "split", val_pct=0.5)["val"].dataset) == 6  # from train/
    (tmp_path / "split" / "val").mkdir()
    with pytest.raises(ValueError, match="has a val/ folder and val_pct was given"):
        image_folder_loaders(tmp_path / "split", val_pct=0.5)


# -------------------------------------------------------------------------------------------- csv


def test_csv_loaders_read_a_csv_a_dataframe_like_and_a_dict(tmp_path: Path) -> None:
    images, labels = _images(8), _labels(8)
    paths = _folder(tmp_path / "pics", images, labels)
    names = ["cat" if y == 0 else "dog" for y in labels]
    (tmp_path / "labels.csv").write_text(
        "file,species\n" + "".join(f"pics/{p},{n}\n" for p, n in zip(paths, names, strict=True))
    )
    kwargs = {"path_column": "file", "label_column": "species", "image_size": SIDE, "num_workers": 0}
    from_csv = csv_loaders(tmp_path / "labels.csv", val_pct=0.25, **kwargs)
    assert from_csv["train"].dataset.classes == ["cat", "dog"]
    assert (len(from_csv["train"].dataset), len(from_csv["val"].dataset)) == (6, 2)
    x, y = next(iter(from_csv["val"]))
    assert x.shape == (2, 3, SIDE, SIDE) and sorted(y.tolist()) == [0, 1]
    assert loader_data_config(from_csv["val"]) == resolve_data_config(DEFAULT_DATA_CONFIG, SIDE)

    class Frame:  # what csv_loaders uses of a pandas DataFrame
        def to_dict(self, orient: str) -> dict:
            assert orient == "list"
            return {"file": paths, "species": [int(v) * 5 + 2 for v in labels]}  # 2 and 7

    numbers = csv_loaders(Frame(), root=tmp_path / "pics", val=Frame(), **kwargs)
    assert numbers["train"].dataset.classes == ["2", "7"]
    table = {"file": paths, "species": [str(v * 5 + 2) for v in range(2)] * 2 + ["12"] * 4}
    assert csv_loaders(table, root=tmp_path / "pics", **kwargs)["train"].dataset.classes == ["2", "7", "12"]


def test_csv_problems_are_named_before_any_loader_is_built(tmp_path: Path) -> None:
    _folder(tmp_path, _images(2), _labels(2))
    table = {"path": ["cat/000.png", "dog/001.png"], "label": ["cat", "dog"]}
    with pytest.raises(
        ValueError, match=r"no column 'file' \(its columns: \['path', 'label'\]\); pass path_"
    ):
        csv_loaders(table, root=tmp_path, path_column="file")
    with pytest.raises(FileNotFoundError, match="1 file.* e.g. .*gone.png; paths are relative to"):
        csv_loaders({"path": ["cat/000.png", "gone.png"], "label": ["a", "b"]}, root=tmp_path)
    with pytest.raises(ValueError, match="row 2 has no 'label'"):
        csv_loaders({"path": ["cat/000.png", "dog/001.png"], "label": ["a", ""]}, root=tmp_path)
    with pytest.raises(ValueError, match=r"labels \['dog'\] outside the classes"):
        csv_loaders(table, root=tmp_path, classes=["cat"])
    with pytest.raises(FileNotFoundError, match="label table .*missing.csv does not exist"):
        csv_loaders(tmp_path / "missing.csv")
    with pytest.raises(TypeError, match="a .csv path, a DataFrame or a dict"):
        csv_loaders([("cat/000.png", "cat")])


# ---------------------------------------------------------------------------------------- predict


def test_predict_takes_numpy_images_like_pil_images() -> None:
    model = build_model(
        "resnet18", num_classes=3, pretrained=False, data_config={"input_size": (3, SIDE, SIDE)}
    )
    images = _images(3)
    from_pil = [model.predict(Image.fromarray(image), top_k=3) for image in images]
    assert _same(model.predict(images[0], top_k=3), from_pil[0])  # one HWC uint8 image
    batch = model.predict(images, top_k=3)  # a batch N, H, W, C
    assert len(batch) == 3 and all(map(_same, batch, from_pil))
    assert all(map(_same, model.predict(list(images.astype(np.float32) / 255), top_k=3), from_pil))
    assert model.predict(images[0, :, :, 0], top_k=1)[0][0] in model.classes  # grey H, W
    with pytest.raises(ValueError, match=r"float image 0 span 2\.\.2; float pixels must lie in \[0, 1\]"):
        model.predict(np.full((8, 8, 3), 2.0))
    with pytest.raises(ValueError, match=r"image 0 is an array of shape \[1, 2, 8, 8, 3\]"):
        model.predict(np.zeros((1, 2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image 1: shape \[8, 8, 5\] ha"):
        model.predict([images[0], np.zeros((8, 8, 5), np.uint8)])


def _same(a: list, b: list) -> bool:
    """The same classes in the same order with the same probabilities (to rounding)."""
    return [n for n, _ in a] == [n for n, _ in b] and np.allclose(
        [p for _, p in a], [p for _, p in b], atol=1e-3
    )


def test_doctests_of_the_new_modules_hold() -> None:
    for module in (transferkit.data.arrays, transferkit.data.pixels, transferkit.data.split):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
