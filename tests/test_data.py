from __future__ import annotations

import doctest
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode, v2

import transferkit.data
import transferkit.data.loaders
import transferkit.data.synthetic
import transferkit.data.transforms
from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAPES,
    ClassFolder,
    SegmentationFolder,
    SyntheticShapes,
    build_segmentation_transforms,
    build_transforms,
    image_folder_loaders,
    make_shapes_folder,
    make_shapes_segmentation_folder,
    segmentation_folder_loaders,
)
from transferkit.training.cache import find_random_transforms

# Identity normalisation and a small size make expected values easy to write down.
PLAIN_CONFIG = {
    "input_size": (3, 32, 32),
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_folder(root, num_classes=3, per_class={"train": 4, "val": 2}, image_size=40)


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes_seg")
    return make_shapes_segmentation_folder(
        root, num_classes=3, per_split={"train": 6, "val": 3}, image_size=40
    )


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "module",
    [transferkit.data, transferkit.data.transforms, transferkit.data.loaders, transferkit.data.synthetic],
    ids=lambda m: m.__name__,
)
def test_doctests_hold(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- SyntheticShapes


def test_synthetic_shapes_is_deterministic_per_seed_and_index():
    a = SyntheticShapes(6, image_size=32, seed=3)
    b = SyntheticShapes(6, image_size=32, seed=3)
    for i in range(6):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert torch.equal(a[5][0], a[5][0])  # repeated access
    other = SyntheticShapes(6, image_size=32, seed=4)
    assert all(not torch.equal(a[i][0], other[i][0]) for i in range(6))
    assert not torch.equal(a[0][0], a[3][0])  # same class, different drawing


def test_synthetic_shapes_items_and_labels():
    ds = SyntheticShapes(12, image_size=32, num_classes=4)
    images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
    assert all(img.shape == (3, 32, 32) and img.dtype == torch.float32 for img in images)
    assert list(labels) == [i % 4 for i in range(12)]
    assert all(isinstance(label, int) for label in labels)
    assert ds.classes == list(SHAPES[:4])


def test_synthetic_shapes_normalisation():
    raw = SyntheticShapes(2, image_size=32, normalize=False)[1][0]
    normed = SyntheticShapes(2, image_size=32)[1][0]
    assert raw.min() >= 0 and raw.max() <= 1
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(normed, (raw - mean) / std, atol=1e-6)


def test_synthetic_segmentation_masks_match_the_drawing():
    ds = SyntheticShapes(12, image_size=48, num_classes=3, task="segmentation", normalize=False)
    assert ds.classes == ["background", "circle", "square", "triangle"]
    for i in range(len(ds)):
        image, mask = ds[i]
        assert mask.shape == (48, 48) and mask.dtype == torch.int64
        values = set(mask.unique().tolist())
        assert {0, i % 3 + 1} <= values <= {0, 1, 2, 3}
        # Background pixels all share one colour that no shape pixel has.
        background = image[:, mask == 0]
        assert (background == background[:, :1]).all()
        shape_pixels = image[:, mask > 0]
        assert ((shape_pixels - background[:, :1]).abs().sum(0) > 0).all()


def test_synthetic_shapes_transform_gets_pil_images():
    cls = SyntheticShapes(3, image_size=40, transform=build_transforms(PLAIN_CONFIG, train=True))
    assert cls[0][0].shape == (3, 32, 32)
    seg = SyntheticShapes(
        3, image_size=40, task="segmentation", transform=build_segmentation_transforms(PLAIN_CONFIG, True)
    )
    image, mask = seg[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 7}, r"\[1, 6\]"),
        ({"task": "detection"}, "detection"),
        ({"image_size": 8}, "16"),
        ({"num_samples": 0}, "num_samples"),
    ],
)
def test_synthetic_shapes_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**{"num_samples": 4, **kwargs})


def test_synthetic_shapes_index_out_of_range():
    with pytest.raises(IndexError):
        SyntheticShapes(4, image_size=32)[4]


@pytest.mark.slow
def test_a_small_cnn_learns_synthetic_shapes():
    torch.manual_seed(0)
    train, val = SyntheticShapes(480, image_size=32, seed=0), SyntheticShapes(150, image_size=32, seed=1)
    x, y = torch.stack([s[0] for s in train]), torch.tensor([s[1] for s in train])
    xv, yv = torch.stack([s[0] for s in val]), torch.tensor([s[1] for s in val])

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    net = nn.Sequential(
        block(3, 8), block(8, 16), block(16, 16), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 3)
    )
    epochs, batches = 10, x.split(32)
    opt = torch.optim.Adam(net.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * len(batches))
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xv).argmax(1) == yv).float().mean().item()
    assert acc > 0.75  # chance is 1/3; about 0.9 when written


# --------------------------------------------------------------------------- transforms


def test_eval_transform_honours_size_mean_std():
    config = {**PLAIN_CONFIG, "mean": (0.5, 0.25, 0.0), "std": (0.5, 0.25, 2.0)}
    out = build_transforms(config, train=False)(Image.new("RGB", (50, 40), (255, 51, 102)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and type(out) is torch.Tensor
    expected = [(1.0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, (0.4 - 0.0) / 2.0]
    assert out.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=1e-5)


def test_eval_transform_crops_by_crop_pct():
    # A white 32x32 centre on a black 64x64 image: crop_pct 0.5 keeps only the centre.
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    half = build_transforms({**PLAIN_CONFIG, "crop_pct": 0.5}, train=False)(image)
    full = build_transforms({**PLAIN_CONFIG, "crop_pct": 1.0}, train=False)(image)
    assert half.min().item() == pytest.approx(1.0)
    assert full.min().item() == pytest.approx(0.0)


def test_transforms_take_interpolation_and_image_size_from_arguments():
    config = {**PLAIN_CONFIG, "interpolation": "bicubic"}
    train = build_transforms(config, train=True, image_size=24)
    crop = next(t for t in train.transforms if isinstance(t, v2.RandomResizedCrop))
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert train(Image.new("RGB", (60, 50))).shape == (3, 24, 24)
    assert build_transforms(config, train=False, image_size=24)(Image.new("RGB", (60, 50))).shape == (
        3,
        24,
        24,
    )


def test_eval_transform_of_a_non_square_input_size():
    out = build_transforms({**PLAIN_CONFIG, "input_size": (3, 24, 40)}, train=False)(
        Image.new("RGB", (64, 64))
    )
    assert out.shape == (3, 24, 40)


def test_transform_config_errors():
    with pytest.raises(ValueError, match="mean"):
        build_transforms({"input_size": (3, 32, 32), "std": (1, 1, 1)}, train=False)
    with pytest.raises(ValueError, match="bicubicc"):
        build_transforms({**PLAIN_CONFIG, "interpolation": "bicubicc"}, train=False)
    with pytest.raises(ValueError, match="crop_pct"):
        build_transforms({**PLAIN_CONFIG, "crop_pct": 0.0}, train=False)


def test_segmentation_train_transform_moves_image_and_mask_together():
    # Image brightness encodes the mask, so any crop or flip applied to one but not the other shows.
    gen = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 5, (48, 64), generator=gen, dtype=torch.uint8)
    mask[:4] = 255
    image = Image.fromarray(np.repeat((mask.numpy() % 255 * 50)[..., None], 3, axis=2))
    transform = build_segmentation_transforms(
        {**PLAIN_CONFIG, "interpolation": "nearest"}, train=True, image_size=24
    )
    torch.manual_seed(0)
    for _ in range(10):
        out_image, out_mask = transform(image, Image.fromarray(mask.numpy()))
        assert out_mask.shape == (24, 24) and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        assert torch.equal((out_image[0] * 255).round().long(), out_mask % 255 * 50)


def test_segmentation_eval_transform_resizes_whole_mask_with_nearest():
    mask = Image.fromarray(np.array([[0, 255], [3, 1]], dtype=np.uint8)).resize(
        (40, 40), Image.Resampling.NEAREST
    )
    _, out = build_segmentation_transforms(PLAIN_CONFIG, train=False, image_size=20)(
        Image.new("RGB", (40, 40)), mask
    )
    assert out.shape == (20, 20)
    assert out[0, 0] == 0 and out[0, -1] == 255 and out[-1, 0] == 3 and out[-1, -1] == 1
    assert set(out.unique().tolist()) == {0, 1, 3, 255}


# --------------------------------------------------------------------------- classification folders


def test_make_shapes_folder_layout(shapes_root: Path):
    for split, per_class in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (shapes_root / split).iterdir()) == ["circle", "square", "triangle"]
        for folder in (shapes_root / split).iterdir():
            assert len(list(folder.glob("*.jpg"))) == per_class
    train_names = {p.name for p in (shapes_root / "train").rglob("*.jpg")}
    assert train_names.isdisjoint(p.name for p in (shapes_root / "val").rglob("*.jpg"))


def test_image_folder_loaders_round_trip(shapes_root: Path):
    loaders = image_folder_loaders(shapes_root, data_config=PLAIN_CONFIG, batch_size=5)
    assert set(loaders) == {"train", "val"}
    assert loaders["train"].dataset.classes == ["circle", "square", "triangle"]
    assert loaders["val"].dataset.classes == ["circle", "square", "triangle"]
    images, labels = next(iter(loaders["train"]))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (5,)
    assert sum(len(labels) for _, labels in loaders["val"]) == 6
    # Labels follow the folder names.
    for path, label in loaders["val"].dataset.samples:
        assert Path(path).parent.name == loaders["val"].dataset.classes[label]


def test_val_loader_is_deterministic_and_train_order_follows_seed(shapes_root: Path):
    loaders = image_folder_loaders(shapes_root, data_config=PLAIN_CONFIG, batch_size=4, seed=1)
    first = torch.cat([images for images, _ in loaders["val"]])
    second = torch.cat([images for images, _ in loaders["val"]])
    assert torch.equal(first, second)

    def train_order(seed: int) -> list[int]:
        loader = image_folder_loaders(shapes_root, data_config=PLAIN_CONFIG, batch_size=12, seed=seed)[
            "train"
        ]
        return next(iter(loader))[1].tolist()

    assert train_order(1) == train_order(1)
    assert train_order(1) != train_order(2)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_augment_false_gives_the_train_split_the_eval_transforms(
    task: str, shapes_root: Path, seg_root: Path
):
    make = image_folder_loaders if task == "classification" else segmentation_folder_loaders
    root = shapes_root if task == "classification" else seg_root
    augmented = make(root, data_config=PLAIN_CONFIG, batch_size=2)["train"].dataset
    assert find_random_transforms(augmented)  # what cache_features=True refuses
    fixed = make(root, data_config=PLAIN_CONFIG, batch_size=2, augment=False)
    train, val = fixed["train"].dataset, fixed["val"].dataset
    assert find_random_transforms(train) == []
    torch.manual_seed(0)
    first = train[0]
    torch.manual_seed(1)
    assert all(
        torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(first, train[0])
    )  # the same tensors whatever the RNG
    # exactly val's preprocessing: a val item read through the train split's transform is unchanged
    val_item = val[0]
    val.transform = train.transform
    assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(val_item, val[0]))


def test_class_folder_takes_fixed_classes(shapes_root: Path, tmp_path: Path):
    transform = build_transforms(PLAIN_CONFIG, False)
    ds = ClassFolder(shapes_root / "val", transform, classes=["circle", "square", "triangle", "star"])
    assert ds.classes == ["circle", "square", "triangle", "star"] and len(ds) == 6
    with pytest.raises(ValueError, match=r"class folders \['triangle'\] that the train split lacks"):
        ClassFolder(shapes_root / "val", transform, classes=["circle", "square"])


def test_image_folder_loaders_use_the_model_data_config(shapes_root: Path):
    model = nn.Linear(1, 1)
    model.data_config = {**PLAIN_CONFIG, "input_size": (3, 24, 24)}
    images, _ = next(iter(image_folder_loaders(shapes_root, model, batch_size=2)["val"]))
    assert images.shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match="not both"):
        image_folder_loaders(shapes_root, model, data_config=PLAIN_CONFIG)
    with pytest.raises(TypeError, match="data_config"):
        image_folder_loaders(shapes_root, nn.Linear(1, 1))


def test_image_folder_without_val_and_with_hidden_folders(shapes_root: Path, tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(shapes_root / "train", root / "train")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    loaders = image_folder_loaders(root, data_config=PLAIN_CONFIG)
    assert set(loaders) == {"train"}
    assert loaders["train"].dataset.classes == ["circle", "square", "triangle"]


def test_val_may_lack_a_class_but_not_add_one(shapes_root: Path, tmp_path: Path):
    root = copy_tree(shapes_root, tmp_path / "data")
    shutil.rmtree(root / "val" / "circle")
    val = image_folder_loaders(root, data_config=PLAIN_CONFIG)["val"].dataset
    assert val.classes == ["circle", "square", "triangle"]
    assert {label for _, label in val.samples} == {1, 2}
    shutil.copytree(root / "val" / "square", root / "val" / "hexagon")
    with pytest.raises(ValueError, match="hexagon"):
        image_folder_loaders(root, data_config=PLAIN_CONFIG)


def test_missing_train_split_names_the_layout(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"train.*root/train/<class>"):
        image_folder_loaders(tmp_path, data_config=PLAIN_CONFIG)


def test_empty_class_folder_is_named(shapes_root: Path, tmp_path: Path):
    root = copy_tree(shapes_root, tmp_path / "data")
    (root / "train" / "hexagon").mkdir()
    (root / "train" / "hexagon" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"train[/\\]hexagon"):
        image_folder_loaders(root, data_config=PLAIN_CONFIG)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_error_names_the_file(shapes_root: Path, tmp_path: Path, damage: str):
    root = copy_tree(shapes_root, tmp_path / "data")
    victim = sorted((root / "val" / "square").glob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(b"this is not a jpeg" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(OSError, match=victim.name):  # when the loaders are built (transferkit.data.check)
        image_folder_loaders(root, data_config=PLAIN_CONFIG, batch_size=2)


def test_shape_writers_refuse_a_non_empty_folder(shapes_root: Path, seg_root: Path):
    with pytest.raises(FileExistsError, match="train"):
        make_shapes_folder(shapes_root, per_class={"train": 1})
    with pytest.raises(FileExistsError, match="train"):
        make_shapes_segmentation_folder(seg_root, per_split={"train": 1})


def test_make_shapes_folder_png(tmp_path: Path):
    root = make_shapes_folder(tmp_path, num_classes=2, per_class={"train": 1}, image_size=32, format="png")
    assert len(list(root.rglob("*.png"))) == 2
    with pytest.raises(ValueError, match="format"):
        make_shapes_folder(tmp_path / "x", format="gif")


# --------------------------------------------------------------------------- segmentation folders


def test_make_shapes_segmentation_folder_layout(seg_root: Path):
    assert (seg_root / "classes.txt").read_text().split() == ["background", "circle", "square", "triangle"]
    for split, count in (("train", 6), ("val", 3)):
        images = sorted(p.stem for p in (seg_root / split / "images").glob("*.png"))
        masks = sorted(seg_root.joinpath(split, "masks").glob("*.png"))
        assert len(images) == count and images == [p.stem for p in masks]
        assert Image.open(masks[0]).mode == "P"


def test_segmentation_folder_loaders_round_trip(seg_root: Path):
    loaders = segmentation_folder_loaders(seg_root, data_config=PLAIN_CONFIG, batch_size=4)
    assert set(loaders) == {"train", "val"}
    assert loaders["val"].dataset.classes == ["background", "circle", "square", "triangle"]
    images, masks = next(iter(loaders["train"]))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3}
    # The stored masks are the dataset's; val resizes them (40 -> 32 px) without inventing labels.
    stored = np.array(Image.open(seg_root / "val" / "masks" / "00006.png"))
    drawn = SyntheticShapes(9, image_size=40, num_classes=3, task="segmentation")[6][1].numpy()
    assert np.array_equal(stored, drawn)
    first_val_mask = next(iter(loaders["val"]))[1][0]
    assert set(first_val_mask.unique().tolist()) == set(np.unique(stored).tolist())


def test_segmentation_folder_reads_grayscale_masks_with_ignore(tmp_path: Path):
    for folder in ("images", "masks"):
        (tmp_path / "train" / folder).mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "train" / "images" / "a.jpg")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 2
    mask[0] = 255
    Image.fromarray(mask).save(tmp_path / "train" / "masks" / "a.png")
    loaders = segmentation_folder_loaders(tmp_path, data_config=PLAIN_CONFIG, batch_size=1)
    assert set(loaders) == {"train"} and loaders["train"].dataset.classes is None
    _, out = next(iter(loaders["train"]))
    assert set(out.unique().tolist()) <= {0, 2, 255}
    plain = SegmentationFolder(tmp_path / "train")
    assert np.array_equal(np.array(plain[0][1]), mask)


def test_image_without_mask_is_named(seg_root: Path, tmp_path: Path):
    root = copy_tree(seg_root, tmp_path / "data")
    (root / "val" / "masks" / "00007.png").unlink()
    with pytest.raises(ValueError, match=r"no mask for image .*00007\.png"):
        segmentation_folder_loaders(root, data_config=PLAIN_CONFIG)


def test_segmentation_layout_errors(seg_root: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="images"):
        segmentation_folder_loaders(tmp_path, data_config=PLAIN_CONFIG)
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="masks"):
        segmentation_folder_loaders(tmp_path, data_config=PLAIN_CONFIG)
    (tmp_path / "train" / "masks").mkdir()
    with pytest.raises(ValueError, match=r"train[/\\]images holds no images"):
        segmentation_folder_loaders(tmp_path, data_config=PLAIN_CONFIG)


def test_bad_masks_are_named(seg_root: Path, tmp_path: Path):
    root = copy_tree(seg_root, tmp_path / "data")
    rgb = root / "train" / "masks" / "00000.png"
    Image.new("RGB", (40, 40)).save(rgb)
    small = root / "train" / "masks" / "00001.png"
    Image.new("L", (20, 20)).save(small)
    dataset = SegmentationFolder(root / "train")
    with pytest.raises(ValueError, match=r"00000\.png has mode RGB"):
        dataset[0]
    with pytest.raises(ValueError, match=r"00001\.png is 20x20"):
        dataset[1]
    small.write_bytes(b"garbage")
    with pytest.raises(OSError, match=r"00001\.png"):
        dataset[1]


def test_default_data_config_is_imagenet():
    assert DEFAULT_DATA_CONFIG["mean"] == IMAGENET_MEAN and DEFAULT_DATA_CONFIG["std"] == IMAGENET_STD
    out = build_transforms(DEFAULT_DATA_CONFIG, train=False)(Image.new("RGB", (300, 260)))
    assert out.shape == (3, 224, 224)
