"""TransferModel composition, save/load, config, registries and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.registry import Registry


def test_intended_use_reads_as_documented() -> None:
    model = tk.build_model("resnet18", neck="identity", head="linear", num_classes=2, pretrained=False)
    model.freeze(policy="last_n", n=4)
    assert model.trainable_blocks == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert isinstance(model, nn.Module) and model.task == "classification"
    assert (model.backbone, model.neck, model.head) == tuple(model.children())


@pytest.mark.parametrize(
    ("name", "neck", "head"), [("resnet18", "identity", "linear"), ("timm/convnext_atto", "fpn_lite", "fcn")]
)
def test_save_load_reproduces_outputs(tmp_path: Path, name: str, neck: str, head: str) -> None:
    model = tk.build_model(name, neck=neck, head=head, num_classes=3, pretrained=False)
    model.freeze(policy="last_n", n=2)
    with torch.no_grad():  # move the BN statistics off their defaults
        model.train()(torch.randn(4, 3, 64, 64))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded = tk.load_model(tmp_path / "run").eval()
    assert torch.equal(loaded(x), expected)
    assert loaded.trainable_blocks == model.trainable_blocks
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == model.config


def test_config_rebuilds_the_architecture() -> None:
    model = tk.build_model(
        "inception_v3",
        neck="fpn_lite",
        head="fcn",
        num_classes=4,
        pretrained=False,
        neck_kwargs={"out_channels": 32},
    )
    rebuilt = tk.build_model(**json.loads(json.dumps(model.config)))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert model.config["backbone"] == "torchvision/inception_v3"
    assert model.config["backbone_kwargs"]["transform_input"] is False


def test_load_model_errors_name_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        tk.load_model(tmp_path)


def test_bare_name_prefers_torchvision_then_timm() -> None:
    assert (
        tk.build_model("resnet18", num_classes=2, pretrained=False).config["backbone"]
        == "torchvision/resnet18"
    )
    model = tk.build_model("convnext_atto", num_classes=2, pretrained=False)
    assert model.config["backbone"] == "timm/convnext_atto"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "resnet181"}, r"Unknown backbone 'resnet181'\. Did you mean: torchvision/resnet18"),
        ({"backbone": "timm/convnext_atoo"}, "timm/convnext_atto"),
        ({"neck": "fpn"}, "Did you mean: .*fpn_lite"),
        ({"head": "lineer"}, "Did you mean: linear"),
        ({"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
        ({"out_indices": [0, 7]}, r"out_indices \(0, 7\) out of range: .* 5 levels"),
        ({"out_indices": [1, 1]}, "duplicates"),
        ({"backbone_kwargs": {"pretrained": True}}, "pass pretrained to build_model directly"),
    ],
)
def test_bad_build_arguments(kwargs: dict, match: str) -> None:
    args = {"backbone": "resnet18", "num_classes": 2, "pretrained": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        tk.build_model(**args)


def test_unknown_name_error_does_not_dump_the_registry() -> None:
    with pytest.raises(ValueError) as info:
        tk.build_model("no_such_model_at_all", num_classes=2, pretrained=False)
    assert len(str(info.value)) < 300 and "list_backbones()" in str(info.value)


def test_input_too_small_or_wrong_channels() -> None:
    model = tk.build_model("inception_v3", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match="too small for this backbone: it needs at least 75x75"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expected an input of shape \[N, 3, H, W\], got \[1, 1, 96, 96\]"):
        model(torch.randn(1, 1, 96, 96))
    vit = tk.build_model("torchvision/vit_b_32", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match="only takes 224x224"):
        vit(torch.randn(1, 3, 64, 64))


def test_in_chans_builds_a_matching_stem() -> None:
    for name in ("resnet18", "timm/resnet18"):
        model = tk.build_model(name, num_classes=2, pretrained=False, in_chans=1)
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2)
        assert model.data_config["input_size"][0] == 1


class TinyBackbone(nn.Module):
    """A hand-written backbone meeting the contract."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.feature_info = tk.FeatureInfo(channels=(8, 16), reductions=(2, 4))
        self.blocks = {"stem": ["stem.weight", "stem.bias"], "stage": ["stage.weight", "stage.bias"]}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.stem(x)
        return [a, self.stage(a)]


def test_module_backbone_and_registration() -> None:
    model = tk.build_model(TinyBackbone(), neck="fpn_lite", head="fcn", num_classes=2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    model.freeze(policy="last_n", n=1)
    assert model.trainable_blocks == ["stage"]

    name = "tiny_test_backbone"
    if name not in tk.list_backbones(name):
        tk.register_backbone(name)(lambda pretrained, in_chans, out_indices: TinyBackbone())
    assert tk.build_model(name, num_classes=3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="already registered"):
        tk.register_backbone(name)(TinyBackbone)
    with pytest.raises(TypeError, match="feature_info"):
        tk.build_model(nn.Conv2d(3, 3, 1), num_classes=2)


def test_registry_lists_with_patterns() -> None:
    registry = Registry("thing")
    registry.register("b_one")(object)
    registry.register("a_two")(object)
    assert registry.list() == ["a_two", "b_one"] and registry.list("b*") == ["b_one"]
    assert tk.list_necks() == ["aspp", "fpn_lite", "identity", "pan", "simple_pyramid"]
    assert tk.list_heads() == [
        "deeplabv3plus",
        "fasterrcnn",
        "fcn",
        "fcos",
        "linear",
        "retinanet",
        "ssdlite",
        "yolo",
    ]
    assert tk.list_backbones("convnext_at*") == [
        "timm/convnext_atto",
        "timm/convnext_atto_ols",
        "timm/convnext_atto_rms",
    ]


def test_feature_info_validation() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        tk.FeatureInfo(channels=(8, 16), reductions=(8, 4))
    with pytest.raises(ValueError, match="2 channel entries but 1 reductions"):
        tk.FeatureInfo(channels=(8, 16), reductions=(4,))


@pytest.mark.parametrize("sequence", [list, tuple])
def test_sequence_kwargs_round_trip_through_config_json(tmp_path: Path, sequence: type) -> None:
    dilation = sequence([False, True, True])
    model = tk.build_model(
        "resnet50",
        num_classes=2,
        pretrained=False,
        backbone_kwargs={"replace_stride_with_dilation": dilation},
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    features = model.backbone(x)
    assert model.backbone.feature_info.reductions == tuple(64 // f.shape[-1] for f in features)
    assert model.backbone.feature_info.reductions == (2, 4, 8, 8, 8)  # layer3, layer4 dilated: levels kept
    model.save(tmp_path / "run")
    loaded = tk.load_model(tmp_path / "run").eval()
    rebuilt = tk.build_model(**json.loads((tmp_path / "run" / "config.json").read_text()))
    assert loaded.config == model.config and rebuilt.config == model.config
    assert model.config["backbone_kwargs"]["replace_stride_with_dilation"] == (False, True, True)
    assert rebuilt.backbone.feature_info == model.backbone.feature_info
    assert torch.equal(loaded(x), model(x))
