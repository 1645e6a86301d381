"""Parameter-efficient policies: LoRA (through peft), BitFit and norm tuning on the same freeze API."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit import Trainer, TransferModel, build_model, load_model

VIT = "timm/vit_tiny_patch16_224"


def _vit() -> TransferModel:
    return build_model(VIT, num_classes=3, pretrained=False, backbone_kwargs={"img_size": 32})


def _resnet() -> TransferModel:
    return build_model("resnet18", num_classes=3, pretrained=False)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train(model: TransferModel, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for i in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _count(model: nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


@pytest.mark.parametrize("build", [_vit, _resnet], ids=["vit_tiny", "resnet18"])
def test_lora_trains_adapters_only_and_leaves_the_base_bit_identical(build, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    model = build()
    base = _snapshot(model.backbone)
    model.freeze("lora", r=4, alpha=8)
    backbone_trainable = {n for n in _trainable(model.backbone)}
    assert backbone_trainable and all(".lora_A." in n or ".lora_B." in n for n in backbone_trainable)
    assert _count(model) / _count(model, trainable=False) < 0.05  # head and neck included
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))  # LoRA's B starts at zero: the model is the same function
    _train(model)
    after = model.backbone.state_dict()
    lora = {k for k in after if ".lora_" in k}
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora if "lora_B" in k)
    renamed = {k.replace(".base_layer.", "."): k for k in after if k not in lora}
    assert set(renamed) == set(base)
    assert all(torch.equal(base[k], after[v]) for k, v in renamed.items())  # weights and BN statistics
    # every parameter in exactly one block; the adapters in the blocks of the layers they adapt
    names = [p for ps in model.backbone.blocks.values() for p in ps]
    assert sorted(names) == sorted(n for n, _ in model.backbone.named_parameters())
    assert set(model.trainable_blocks) == {
        b for b, ps in model.backbone.blocks.items() if any(".lora_" in p for p in ps)
    }
    model.eval()
    out = model(x)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert torch.equal(loaded(x), out)
    assert loaded.freeze_state() == model.freeze_state() and _trainable(loaded) == _trainable(model)
    model.merge()
    assert not any(".lora_" in k or "base_layer" in k for k in model.state_dict())
    assert set(model.backbone.state_dict()) == set(base)
    assert not any(type(m).__module__.startswith("peft") for m in model.modules())
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)
    assert model.freeze_state()["policy"] == "all" and model.freeze_state()["adapters"] is None
    assert _trainable(model.backbone) == set()


def test_lora_default_targets_and_explicit_ones() -> None:
    pytest.importorskip("peft")
    vit = _vit()
    vit.freeze("lora")
    targets = vit.freeze_state()["adapters"]["targets"]
    assert len(targets) == 12 * 3 and {t.rpartition(".")[2] for t in targets} == {"qkv", "fc1", "fc2"}
    assert _count(vit) / _count(vit, trainable=False) < 0.05  # r=8 on the smallest ViT: 4.5 %, head included
    resnet = _resnet()
    resnet.freeze("lora")
    targets = resnet.freeze_state()["adapters"]["targets"]
    assert targets[0] == "body.layer3.1.conv1" and "body.layer4.0.downsample.0" in targets
    assert resnet.trainable_blocks == ["layer3.1", "layer4.0", "layer4.1"]
    only = _resnet()
    only.freeze("lora", targets=["layer4.1.conv2"], r=2)
    assert only.freeze_state()["adapters"]["targets"] == ["body.layer4.1.conv2"]
    assert _count(only.backbone) == 2 * 512 * 9 + 2 * 512  # A: Conv(512 -> 2, 3x3), B: Conv(2 -> 512, 1x1)
    with pytest.raises(ValueError, match="pick no Linear or Conv2d layer"):
        _resnet().freeze("lora", targets=["nothing_here"])
    with pytest.raises(ValueError, match="r .* must be an int >= 1"):
        _resnet().freeze("lora", r=0)


def test_lora_adapters_stay_through_other_policies_until_merged(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    model = _resnet()
    model.freeze("lora", r=2)
    model.freeze("last_n", n=1)  # the adapters stay; now layer4.1 trains, its adapters with it
    assert model.freeze_state()["adapters"] is not None
    assert any(".lora_" in n for n in _trainable(model.backbone))
    model.save(tmp_path / "m")
    assert load_model(tmp_path / "m").freeze_state() == model.freeze_state()
    with pytest.raises(ValueError, match="already carries LoRA adapters"):
        model.freeze("lora", r=16)
    model.freeze("lora", r=2)  # the same settings: nothing to change
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        _resnet().merge()


def test_lora_without_peft_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "peft" or m.startswith("peft.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    model = _resnet()
    with pytest.raises(ImportError, match=r"transferkit\[peft\]"):
        model.freeze("lora")
    assert model.freeze_state()["policy"] == "none"  # nothing changed
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("policy", ["bitfit", "norm"])
@pytest.mark.parametrize("build", [_vit, _resnet], ids=["vit_tiny", "resnet18"])
def test_bitfit_and_norm_train_exactly_their_parameters(policy: str, build, tmp_path: Path) -> None:
    model = build()
    model.freeze(policy)
    norms = {
        f"{name}.{p}"
        for name, m in model.backbone.named_modules()
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))
        for p, _ in m.named_parameters(recurse=False)
    }
    biases = {n for n, _ in model.backbone.named_parameters() if n.endswith(".bias")}
    assert _trainable(model.backbone) == (biases if policy == "bitfit" else norms)
    before = _snapshot(model.backbone)
    _train(model)
    after = model.backbone.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == _trainable(model.backbone)  # BN statistics held: the base is bit-identical
    summary = model.freeze_summary()
    total = summary.splitlines()[-1].split()
    assert int(total[2].replace(",", "")) == _count(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert torch.equal(loaded(x), model(x)) and _trainable(loaded) == _trainable(model)


def test_parameter_efficient_policies_take_no_block_arguments() -> None:
    with pytest.raises(ValueError, match="takes no arguments; got unexpected n"):
        _resnet().freeze("bitfit", n=2)
    with pytest.raises(ValueError, match="bn='frozen_all' fixes"):
        _resnet().freeze("norm", bn="frozen_all")


def test_lora_feature_cache_serves_the_frozen_prefix() -> None:
    pytest.importorskip("peft")
    model = _resnet()
    model.freeze("lora", r=2)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 3, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = Trainer(model, epochs=2, cache_features=True, progress=False)
    history = trainer.fit(loader)
    assert trainer._cache.boundary() == model.blocks.index("layer3.1")
    assert history[-1]["trainable_blocks"] == 3


def test_cli_freeze_specs_apply_the_policies() -> None:
    from transferkit.cli import parse_freeze

    model = _resnet()
    parse_freeze("bitfit").apply(model)
    assert model.freeze_state()["policy"] == "bitfit"
    if importlib.util.find_spec("peft") is not None:
        parse_freeze("lora:2:4").apply(model)
        adapters = model.freeze_state()["adapters"]
        assert (adapters["r"], adapters["alpha"]) == (2, 4)
