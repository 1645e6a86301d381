"""The Backbone contract for the models the tutorials use, and a registry-wide smoke test."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.models.backbones import create_backbone
from transferkit.models.backbones.timm import timm_names
from transferkit.models.backbones.torchvision import torchvision_names

TUTORIAL_MODELS = [
    "resnet18",
    "alexnet",
    "vgg16",
    "squeezenet1_0",
    "densenet121",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mnasnet1_0",
    "timm/resnet18",
    "timm/efficientnet_b0",
    "timm/convnext_atto",
    "timm/mobilenetv3_small_100",
    "timm/regnety_002",
    "timm/vit_tiny_patch16_224",
]
# Inputs are small; inception_v3 needs at least 75 px, the ViT is built for 64 px.
SIZE = {"inception_v3": 128}
KWARGS = {"timm/vit_tiny_patch16_224": {"img_size": 64}}


def _build(name: str, **kwargs):
    return tk.build_model(name, num_classes=5, pretrained=False, backbone_kwargs=KWARGS.get(name), **kwargs)


def _forward_order(backbone: nn.Module, x: torch.Tensor) -> list[str]:
    """Parameter names in the order their modules first run."""
    order: list[str] = []
    hooks = []
    for path, module in backbone.named_modules():
        own = [f"{path}.{n}" for n, _ in module.named_parameters(recurse=False)]
        if own:
            hooks.append(module.register_forward_pre_hook(lambda m, i, own=own: order.extend(own)))
    backbone(x)
    for h in hooks:
        h.remove()
    return list(dict.fromkeys(order))


@pytest.mark.parametrize("name", TUTORIAL_MODELS)
def test_tutorial_backbone_contract(name: str) -> None:
    model = _build(name).train()
    size = SIZE.get(name, 64)
    x = torch.randn(2, 3, size, size)

    out = model(x)
    assert out.shape == (2, 5)

    features = model.backbone(x)
    model.backbone.feature_info.check(features, (size, size))

    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"

    blocks = model.backbone.blocks
    assert list(blocks)[0] == "stem" and len(blocks) >= 4
    names = [n for n, _ in model.backbone.named_parameters()]
    flat = [p for ps in blocks.values() for p in ps]
    assert sorted(flat) == sorted(names), "every backbone parameter in exactly one block"
    block_of = {p: i for i, ps in enumerate(blocks.values()) for p in ps}
    with torch.no_grad():
        indices = [block_of[p] for p in _forward_order(model.backbone, x)]
    assert indices == sorted(indices), "blocks must follow the forward order"


def test_resnet18_levels_and_blocks() -> None:
    backbone = create_backbone("resnet18", pretrained=False)
    assert backbone.feature_info.channels == (64, 64, 128, 256, 512)
    assert backbone.feature_info.reductions == (2, 4, 8, 16, 32)
    expected = ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert list(backbone.blocks) == expected
    assert backbone.blocks["stem"] == ["body.conv1.weight", "body.bn1.weight", "body.bn1.bias"]


@pytest.mark.parametrize("name", ["resnet18", "timm/convnext_atto", "timm/vit_tiny_patch16_224"])
@pytest.mark.parametrize("neck", ["fpn_lite", "identity"])
def test_segmentation_output_at_input_size(name: str, neck: str) -> None:
    model = tk.build_model(
        name, neck=neck, head="fcn", num_classes=4, pretrained=False, backbone_kwargs=KWARGS.get(name)
    )
    assert model.task == "segmentation"
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_vit_levels_all_have_stride_16() -> None:
    model = _build("timm/vit_tiny_patch16_224", neck="fpn_lite")
    assert set(model.backbone.feature_info.reductions) == {16}
    assert all(f.shape[-1] == 4 for f in model.backbone(torch.randn(1, 3, 64, 64)))


def test_out_indices_select_levels() -> None:
    model = tk.build_model("resnet18", num_classes=2, pretrained=False, out_indices=[2, 4])
    assert model.backbone.feature_info.reductions == (8, 32)
    assert [f.shape[1] for f in model.backbone(torch.randn(1, 3, 64, 64))] == [128, 512]
    timm_model = tk.build_model("timm/resnet18", num_classes=2, pretrained=False, out_indices=[-1])
    assert timm_model.backbone.feature_info.channels == (512,)


def test_data_config_from_pretrained_config() -> None:
    assert create_backbone("inception_v3", pretrained=False).data_config["input_size"] == (3, 299, 299)
    cfg = create_backbone("timm/vit_tiny_patch16_224", pretrained=False).data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"


def test_list_backbones_covers_both_libraries() -> None:
    names = tk.list_backbones()
    assert len(names) > 1000 and names == sorted(names)
    assert len(tk.list_backbones("torchvision/*")) == len(torchvision_names()) >= 80
    assert "timm/convnext_atto" in names and "torchvision/resnet18" in names
    assert tk.list_backbones("torchvision/resnet1*") == [
        "torchvision/resnet101",
        "torchvision/resnet152",
        "torchvision/resnet18",
    ]


def _family(name: str) -> str:
    return re.match(r"[a-z]+", name).group()


_SMALL = (
    "atto",
    "femto",
    "pico",
    "nano",
    "tiny",
    "xxs",
    "xs",
    "mini",
    "small",
    "s",
    "b0",
    "18",
    "_100",
    "400mf",
)


def _smallest(names: list[str]) -> str:
    """A small member of a family, so the smoke test stays quick."""

    def rank(name: str) -> tuple[int, int, str]:
        parts = name.replace(".", "_").split("_")
        hits = [i for i, word in enumerate(_SMALL) if any(p.endswith(word) for p in parts)]
        return (min(hits, default=len(_SMALL)), len(name), name)

    return min(names, key=rank)


def _timm_families() -> list[str]:
    from timm.models._registry import _model_to_module

    families: dict[str, list[str]] = collections.defaultdict(list)
    for name in timm_names():
        families[_model_to_module[name]].append(name)
    return sorted(_smallest(names) for names in families.values())


def _tv_families() -> list[str]:
    families: dict[str, list[str]] = collections.defaultdict(list)
    for name in torchvision_names():
        families[_family(name)].append(name)
    return sorted(_smallest(names) for names in families.values())


def _smoke(name: str) -> None:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            backbone = create_backbone(name, pretrained=False).eval()
        except NotImplementedError:  # builders computing widths with tensor ops (regnet) need real tensors
            with torch.device("cpu"):
                backbone = create_backbone(name, pretrained=False).eval()
        size = backbone.fixed_input_size or backbone.data_config["input_size"][-1]
        try:
            features = backbone(torch.empty(2, 3, size, size))
        except RuntimeError as err:  # a few models read tensor values while running (.item())
            if "meta" not in str(err):
                raise
            features = None
    if features is not None:
        assert [f.shape[1] for f in features] == list(backbone.feature_info.channels)
    assert sum(len(ps) for ps in backbone.blocks.values()) == len(list(backbone.parameters()))


@pytest.mark.parametrize("name", [f"torchvision/{n}" for n in _tv_families()])
def test_registry_smoke_torchvision(name: str) -> None:
    _smoke(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"timm/{n}" for n in _timm_families()])
def test_registry_smoke_timm(name: str) -> None:
    _smoke(name)


def test_timm_is_imported_only_for_timm_backbones() -> None:
    # timm costs ~30 MB and a second of import time that torchvision users should not pay
    code = (
        "import sys, transferkit\n"
        "transferkit.build_model('resnet18', num_classes=2, pretrained=False)\n"
        "assert 'timm' not in sys.modules, 'torchvision path imported timm'\n"
        "transferkit.build_model('timm/resnet18', num_classes=2, pretrained=False)\n"
        "assert 'timm' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------- timm, built by timm


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_a_timm_backbone_is_built_once_and_its_file_loaded_by_timm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """One ``timm.create_model(features_only=True)`` builds the extractor and loads the file: no second
    (meta-device) model for names and levels, no weights mapped by hand."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    state = timm.create_model(name).state_dict()
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    real, calls = timm.create_model, []

    def counted(*args: Any, **kwargs: Any) -> torch.nn.Module:
        calls.append(kwargs.get("features_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", counted)
    for pretrained in (False, str(path)):
        calls.clear()
        backbone = create_backbone(f"timm/{name}", pretrained=pretrained)
        assert calls == [True]
    loaded = backbone.body.state_dict()
    assert loaded and all(torch.equal(value, state[key]) for key, value in loaded.items())


def test_no_private_timm_module_is_imported() -> None:
    root = Path(tk.__file__).parent
    private = re.compile(r"timm\.(models|layers)\._")
    hits = [
        f"{path.relative_to(root)}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for line in path.read_text().splitlines()
        if private.search(line)
    ]
    assert not hits, hits
