"""The fast folder pipeline: reduced-scale JPEG decoding, the decoded-image cache, worker defaults."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as TF

from transferkit.data import (
    DEFAULT_DATA_CONFIG,
    CachedFolder,
    ClassFolder,
    ImageCache,
    build_transforms,
    default_num_workers,
    image_folder_loaders,
)
from transferkit.data import loaders as loaders_module
from transferkit.data.folders import _load_rgb
from transferkit.training.cacheable import find_random_transforms

SIZE = 32  # crop side: train images are cached up to a shorter side of 64, val ones as 32 x 32 crops
STD = torch.tensor(DEFAULT_DATA_CONFIG["std"]).view(3, 1, 1)


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour waves, sensor-like noise and a few ellipses: JPEG content with detail at every scale."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = np.stack([np.sin(x / 37 + seed), np.cos(y / 23), np.sin((x + y) / 51)], -1) * 90 + 128
    pixels = np.clip(waves + rng.normal(0, 12, waves.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        size = int(rng.integers(8, width // 3))
        draw.ellipse([x0, y0, x0 + size, y0 + size], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/{ants,bees}: 3 photos each, 48-60 px wide, and bees/big.jpg 160 x 120; val: 1 photo each."""
    root = tmp_path_factory.mktemp("photos")
    sizes = {"train": [(48, 40), (60, 45), (52, 52)], "val": [(56, 42)]}
    for split, shapes in sizes.items():
        for c, name in enumerate(("ants", "bees")):
            (root / split / name).mkdir(parents=True)
            for i, (w, h) in enumerate(shapes):
                _photo(w, h, seed=10 * c + i).save(root / split / name / f"{i}.jpg", quality=90)
    _photo(160, 120, seed=99).save(root / "train" / "bees" / "big.jpg", quality=90)
    return root


def _loaders(root: Path, **kwargs) -> dict:
    kwargs = {"data_config": DEFAULT_DATA_CONFIG, "image_size": SIZE, "batch_size": 4, **kwargs}
    return image_folder_loaders(root, **{"num_workers": 0, **kwargs})


# ------------------------------------------------------------------------------ reduced-scale decoding
def test_reduced_decoding_keeps_the_side_and_stays_close_to_full_decoding(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    _photo(512, 384, seed=1).save(path, quality=90)
    assert _load_rgb(path, min_side=96).size == (128, 96)  # 1/4 scale: 384 // 96 = 4
    assert _load_rgb(path, min_side=97).size == (256, 192)  # 1/4 would give 96 < 97: 1/2
    assert _load_rgb(path, min_side=400).size == (512, 384)
    # what the model sees at 64 px (the eval resize to 73, then the crop) from 1/4 scale vs full decoding
    evaluate = build_transforms(DEFAULT_DATA_CONFIG, False, 64)
    full, reduced = evaluate(_load_rgb(path)), evaluate(_load_rgb(path, min_side=73))
    levels = ((full - reduced) * STD * 255).abs()  # in 8-bit pixel levels
    assert levels.mean() < 1.5 and torch.quantile(levels.flatten(), 0.99) < 8


def test_loaders_decode_where_the_smallest_crop_spans_the_input_and_at_the_resize_side_for_val(
    photos: Path,
) -> None:
    # the smallest random crop (min area, 3:4) of a square image decoded at that side still spans SIZE
    for crop_scale, side in (((0.7, 1.0), 45), ((0.35, 1.0), 63), ((1.0, 1.0), 37)):
        loaders = _loaders(photos, crop_scale=crop_scale)
        assert loaders["train"].dataset.decode_side == side, crop_scale
        assert math.sqrt(crop_scale[0] * side * side * 3 / 4) >= SIZE
        assert math.sqrt(crop_scale[0] * (side - 1) ** 2 * 3 / 4) < SIZE  # and no larger than it needs
    loaders = _loaders(photos)
    assert loaders["train"].dataset.decode_side == 45  # the default crop_scale, (0.7, 1.0)
    assert loaders["val"].dataset.decode_side == 36  # floor(32 / 0.875), the eval resize's side
    assert _loaders(photos, augment=False)["train"].dataset.decode_side == 36
    assert _loaders(photos, fast_decode=False)["train"].dataset.decode_side is None


# ------------------------------------------------------------------------------------- image cache
def test_cached_pipeline_gives_the_uncached_tensors_for_the_same_random_state(photos: Path) -> None:
    plain, cached = _loaders(photos), _loaders(photos, cache_images=True)
    for split in ("train", "val"):
        a, b = plain[split].dataset, cached[split].dataset
        assert isinstance(b, CachedFolder) and b.classes == a.classes and len(b) == len(a)
        for i in range(len(a)):
            torch.manual_seed(i)
            expected = a[i]
            torch.manual_seed(i)
            got = b[i]
            assert got[1] == expected[1] and torch.equal(got[0], expected[0]), (split, i)
    first, second = cached["train"].dataset[0][0], cached["train"].dataset[0][0]
    assert first.shape == (3, SIZE, SIZE) and not torch.equal(first, second)  # a new crop per access


def test_keep_side_shrinks_large_train_images_and_crops_the_same_part(photos: Path) -> None:
    uncached = _loaders(photos, fast_decode=False)["train"].dataset
    dataset = CachedFolder(uncached, budget=2**20, keep_side=2 * SIZE)
    index = next(i for i, (p, _) in enumerate(dataset.samples) if Path(p).name == "big.jpg")
    kept = dataset.cache[index]
    assert kept.dtype == torch.uint8 and kept.shape == (3, 2 * SIZE, 2 * SIZE * 160 // 120)
    full = TF.to_image(_load_rgb(dataset.samples[index][0]))
    reference = TF.resize(full, [2 * SIZE], antialias=True)
    assert (kept.float() - reference.float()).abs().max() <= 1  # the same resize, rounding aside
    others = [dataset.cache[i].shape for i in range(len(dataset)) if i != index]
    assert all(min(shape[1:]) <= 52 for shape in others)  # small photos are kept as decoded
    # The same random numbers crop the same part of the photo; resampling from the copy shrunk 1.9x
    # (crop corners rounded to its pixels) differs by 1.5-3 of 255 levels on average on this noisy
    # texture, up to ~30 on single pixels at edges.
    for seed in range(5):
        torch.manual_seed(seed)
        expected = uncached[index][0]
        torch.manual_seed(seed)
        assert ((dataset[index][0] - expected) * STD * 255).abs().mean() < 4


def test_in_memory_part_never_exceeds_the_budget_and_the_rest_reads_back_from_disk(
    photos: Path, tmp_path: Path
) -> None:
    everything = _loaders(photos, cache_images=True, augment=False)
    total = sum(ds.cache.memory_bytes for ds in (everything["train"].dataset, everything["val"].dataset))
    assert total == 9 * 3 * SIZE * SIZE  # 7 train + 2 val crops of 32 x 32
    budget = 5 * 3 * SIZE * SIZE + 100
    split = _loaders(photos, cache_images=True, augment=False, cache_budget=budget, cache_dir=tmp_path)
    train, val = split["train"].dataset.cache, split["val"].dataset.cache
    assert train.memory_bytes == 5 * 3 * SIZE * SIZE and train.disk_bytes == 2 * 3 * SIZE * SIZE
    assert val.memory_bytes == 0 and val.disk_bytes == 2 * 3 * SIZE * SIZE  # the budget is shared
    assert train.memory_bytes + val.memory_bytes <= budget
    for name in ("train", "val"):
        for i in range(len(split[name].dataset)):
            assert torch.equal(split[name].dataset[i][0], everything[name].dataset[i][0])
    files = list(tmp_path.glob("transferkit-images-*/images.bin"))
    assert len(files) == 2
    del split, train, val
    gc.collect()
    assert not list(tmp_path.glob("transferkit-images-*"))  # deleted with the caches


def test_workers_read_the_cache_filled_before_they_start(photos: Path, tmp_path: Path) -> None:
    import shutil

    root = shutil.copytree(photos, tmp_path / "copy")
    expected = [x for x, _ in _loaders(root, cache_images=True)["val"]]
    loaders = _loaders(root, cache_images=True, num_workers=2, cache_budget=3 * 3 * 64 * 64)
    assert loaders["train"].dataset.cache.disk_bytes > 0  # workers read both parts
    shutil.rmtree(root)  # any decoding in a worker would now fail
    assert loaders["train"].num_workers == 2 and loaders["train"].persistent_workers
    for _epoch in range(2):
        batches = list(loaders["train"])
        assert sum(len(y) for _, y in batches) == 7 and batches[0][0].shape == (4, 3, SIZE, SIZE)
    assert all(torch.equal(a, b) for a, b in zip(expected, [x for x, _ in loaders["val"]], strict=True))


def test_image_cache_is_seen_as_random_by_the_feature_cache_check(photos: Path) -> None:
    loaders = _loaders(photos, cache_images=True)
    assert any("RandomResizedCrop" in r for r in find_random_transforms(loaders["train"].dataset))
    assert find_random_transforms(loaders["val"].dataset) == []


def test_image_cache_errors_name_the_budget_and_the_file(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache_budget is a number of bytes >= 0, got -1"):
        _loaders(photos, cache_images=True, cache_budget=-1)
    with pytest.raises(ValueError, match="image cache budget is a number of bytes >= 0, got -5"):
        ImageCache([], lambda item: item, budget=-5)
    root = tmp_path / "broken"
    for name in ("ants", "bees"):  # two classes: a classifier of one is refused before any image is read
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=r"cannot be read: .*bad\.jpg \(not an image file"):
        _loaders(root, cache_images=True)  # named before anything is cached (transferkit.data.check)
    folder = ClassFolder(root / "train", lambda image: image)
    with pytest.raises(ValueError, match="starts with v2.ToImage"):
        CachedFolder(folder, budget=0, keep_side=8)


# ----------------------------------------------------------------------------------- worker defaults
@pytest.mark.parametrize(("cpus", "samples", "workers"), [(2, 200, 2), (16, 200, 8), (1, 200, 0), (4, 63, 0)])
def test_default_workers_follow_the_usable_cores(monkeypatch, cpus, samples, workers) -> None:
    monkeypatch.setattr(loaders_module, "usable_cpus", lambda: cpus)
    assert default_num_workers(samples) == workers


def test_loaders_pick_workers_per_split_and_pin_only_with_cuda(photos: Path, monkeypatch) -> None:
    monkeypatch.setattr(loaders_module, "_MIN_SAMPLES_FOR_WORKERS", 4)  # train has 7 images, val 2
    monkeypatch.setattr(loaders_module, "usable_cpus", lambda: 2)
    loaders = _loaders(photos, num_workers=None)
    assert (loaders["train"].num_workers, loaders["val"].num_workers) == (2, 0)
    assert loaders["train"].persistent_workers and not loaders["val"].persistent_workers
    assert loaders["train"].pin_memory == torch.cuda.is_available()
