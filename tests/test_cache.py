"""Feature caching: cached training equals uncached training, runs the prefix once, and fails clearly."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import transforms as v1
from torchvision.datasets import VisionDataset
from torchvision.transforms import v2

from transferkit import FeatureInfo, Trainer, build_model
from transferkit.data import DEFAULT_DATA_CONFIG, SyntheticShapes, build_transforms
from transferkit.training.cache import FeatureCache, find_random_transforms

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache
def _shapes(n: int, task: str = "classification") -> TensorDataset:
    ds = SyntheticShapes(n, image_size=SIZE, num_classes=3, task=task, seed=0)
    images, targets = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(np.stack(targets)))


def _loader(ds, batch_size: int = 8, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(1) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _model(task: str = "classification", dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    if task == "segmentation":
        return build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=4, pretrained=False)
    head_kwargs = {"dropout": dropout}
    return build_model("resnet18", num_classes=3, pretrained=False, head_kwargs=head_kwargs)


def _fit(model, cache: bool, loaders, epochs: int = 2, **kwargs):
    torch.manual_seed(2)  # the same global RNG for both runs (dropout, shuffling without a generator)
    trainer = Trainer(model, epochs=epochs, lr=3e-3, progress=False, cache_features=cache, **kwargs)
    return trainer.fit(loaders)


def _assert_close_states(a: nn.Module, b: nn.Module, atol: float = 1e-5) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    worst = {k: (sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].numel()}
    bad = {k: v for k, v in worst.items() if v > atol}
    assert not bad, f"cached and uncached training differ: {sorted(bad.items(), key=lambda kv: -kv[1])[:3]}"


# ------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    ("policy", "task", "shuffle"),
    [
        ("all", "classification", False),  # the fixed batch order
        ("last_n", "classification", False),
        ("last_n", "segmentation", False),  # fpn_lite reads every level: a multi-tensor state
        ("all", "classification", True),  # shuffled: the cache follows the loader's batch order
    ],
)
def test_cached_training_matches_uncached(policy: str, task: str, shuffle: bool) -> None:
    data = _shapes(16, task)
    dropout = 0.5 if shuffle else 0.0  # dropout masks must match too: same RNG consumption
    runs = []
    for cache in (False, True):
        model = _model(task, dropout)
        model.freeze(policy, **({"n": 2} if policy == "last_n" else {}))
        val = _loader(_shapes(8, task), batch_size=4)
        history = _fit(model, cache, {"train": _loader(data, shuffle=shuffle), "val": val})
        runs.append((model, history))
    (plain, plain_history), (cached, cached_history) = runs
    head_a, head_b = plain.head.state_dict(), cached.head.state_dict()
    for key in head_a:  # acceptance: the same head weights within 1e-5
        torch.testing.assert_close(head_b[key], head_a[key], atol=1e-5, rtol=0)
    _assert_close_states(plain, cached)
    for a, b in zip(plain_history, cached_history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)


def test_gradual_moves_the_boundary_then_drops_the_cache() -> None:
    boundaries: list[int | None] = []

    class Watch:
        def on_epoch_end(self, trainer: Trainer) -> None:
            cache = trainer._cache._caches.get("train")
            boundaries.append(cache.boundary if cache is not None else None)

    models = []
    for cache in (False, True):
        model = _model()
        model.freeze("gradual", n=0, step=4, every=1)  # 9 blocks: boundaries 9, 5, 1, then none
        _fit(model, cache, _loader(_shapes(16)), epochs=4, callbacks=[Watch()] if cache else [])
        models.append(model)
    assert boundaries == [9, 5, 1, None]
    _assert_close_states(*models)


def test_prefix_runs_once_per_sample() -> None:
    calls = {"images": 0}
    model = _model()
    model.freeze("all")
    stem = model.backbone.get_submodule(model.backbone.blocks["stem"][0].rpartition(".")[0])
    stem.register_forward_hook(
        lambda module, inputs, output: calls.update(images=calls["images"] + len(output))
    )
    history = _fit(
        model, True, {"train": _loader(_shapes(16), shuffle=True), "val": _loader(_shapes(8))}, epochs=3
    )
    assert len(history) == 3
    assert calls["images"] == 16 + 8  # each train and val sample once, not once per epoch


def test_cache_holds_only_the_levels_read() -> None:
    model = _model()
    model.freeze("last_n", n=2)
    cache = FeatureCache(model, 7, _loader(_shapes(8)), device=torch.device("cpu"))
    batch, targets = next(iter(cache.epoch()))
    # identity neck + linear head read the last level only: the boundary activation is the whole state
    assert [tuple(s.shape) for s in batch.state] == [(8, 256, 2, 2)]
    assert batch.input_size == (SIZE, SIZE)
    assert torch.equal(targets, _shapes(8).tensors[1])
    model.eval()
    expected = model(_shapes(8).tensors[0])
    torch.testing.assert_close(cache.trainable(*batch.state, input_size=batch.input_size), expected)
    cache.close()


def test_cache_spills_to_disk_past_the_budget_and_cleans_up(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    class Look:
        def on_epoch_end(self, trainer: Trainer) -> None:
            seen.append(sorted(p.name for p in tmp_path.glob("transferkit-cache-*/*")))

    runs = []
    for budget in (2**30, 0):
        model = _model()
        model.freeze("all")
        callbacks = [Look()] if budget == 0 else []
        kwargs = {"cache_budget": budget, "cache_dir": tmp_path, "callbacks": callbacks}
        runs.append((model, _fit(model, True, _loader(_shapes(16)), **kwargs)))
    assert seen and all(names == ["entry0.bin", "entry1.bin"] for names in seen)  # features, targets
    assert list(tmp_path.iterdir()) == []  # deleted when fit ends
    _assert_close_states(runs[0][0], runs[1][0], atol=0.0)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("transform", "name"),
    [
        (build_transforms(DEFAULT_DATA_CONFIG, train=True, image_size=SIZE), "RandomResizedCrop"),
        (v1.Compose([v1.ColorJitter(0.2), v1.ToTensor()]), "ColorJitter"),
        (v2.Compose([v2.ToImage(), v2.GaussianBlur(3, sigma=(0.1, 2.0))]), "GaussianBlur"),
    ],
)
def test_augmenting_loader_is_refused_with_a_clear_error(transform, name: str) -> None:
    data = Subset(SyntheticShapes(8, image_size=SIZE, transform=transform), range(8))
    model = _model()
    model.freeze("all")
    with pytest.raises(ValueError, match=rf"deterministic train loader.*{name}.*cache_features=False"):
        _fit(model, True, _loader(data))


def test_deterministic_transforms_are_accepted() -> None:
    eval_transform = build_transforms(DEFAULT_DATA_CONFIG, train=False, image_size=SIZE)
    fixed_blur = v2.Compose([v2.ToImage(), v2.GaussianBlur(3, sigma=1.0)])
    for transform in (eval_transform, fixed_blur):
        assert find_random_transforms(SyntheticShapes(4, image_size=SIZE, transform=transform)) == []
    found = find_random_transforms(
        torch.utils.data.ConcatDataset([_shapes(4), SyntheticShapes(4, transform=v2.RandomHorizontalFlip())])
    )
    assert found == ["dataset.datasets[1].transform: RandomHorizontalFlip"]


class Folder(VisionDataset):
    """A torchvision dataset: it keeps a StandardTransform copy of ``transform`` from construction."""

    def __len__(self) -> int:
        return 2


def test_vision_dataset_transform_replaced_after_construction_is_read() -> None:
    ds = Folder("unused", transform=v2.RandomHorizontalFlip())
    assert find_random_transforms(ds) == ["dataset.transform: RandomHorizontalFlip"]
    ds.transform = build_transforms(
        DEFAULT_DATA_CONFIG, train=False, image_size=SIZE
    )  # what __getitem__ uses
    assert find_random_transforms(ds) == []


def test_unusable_setups_fail_before_training() -> None:
    model = _model()
    model.freeze("all", bn="train")
    with pytest.raises(ValueError, match="bn='frozen'"):
        _fit(model, True, _loader(_shapes(8)))
    model.freeze("all")
    with pytest.raises(TypeError, match="DataLoader"):
        _fit(model, True, [(torch.zeros(2, 3, SIZE, SIZE), torch.zeros(2, dtype=torch.long))])


class TwoBlockNet(nn.Module):
    """A custom backbone with two blocks and no split()."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 8, 3, stride=2)
        self.feature_info = FeatureInfo(channels=[8], reductions=[4])
        self.blocks = {"a": ["a.weight", "a.bias"], "b": ["b.weight", "b.bias"]}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.b(self.a(x))]


def test_backbone_without_split_caches_only_when_all_is_frozen() -> None:
    model = build_model(TwoBlockNet(), num_classes=3)
    model.freeze("all")
    assert len(_fit(model, True, _loader(_shapes(8)))) == 2  # the whole backbone: no split needed
    model.freeze("last_n", n=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError, match=r"split\(\).*cache_features=False"):
        _fit(model, True, _loader(_shapes(8)))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing trained


@pytest.mark.gpu
def test_cuda_bf16_cached_training_matches_uncached() -> None:
    models = []
    for cache in (False, True):
        model = _model()
        model.freeze("last_n", n=2)
        torch.manual_seed(2)
        trainer = Trainer(
            model, epochs=2, device="cuda", precision="bf16", progress=False, cache_features=cache
        )
        trainer.fit(_loader(_shapes(16), shuffle=True))
        models.append(model.cpu())
    _assert_close_states(*models, atol=1e-3)  # bf16 kernels may differ with the batch composition
