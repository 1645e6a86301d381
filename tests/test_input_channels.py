"""Pretrained weights for 3 channels load into models with other in_chans, adapted as timm does."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import transferkit as tk
from transferkit.models.input_channels import adapt_input_conv


def _weights(tmp_path: Path, source: str) -> tuple[Path, dict[str, torch.Tensor], str, str]:
    """A weights file of a randomly initialised 3-channel model, its state, first kernel key and name."""
    torch.manual_seed(11)
    if source == "torchvision":
        state, first, name = torchvision.models.resnet18().state_dict(), "conv1.weight", "resnet18"
    else:
        state, first = timm.create_model("efficientnet_lite0").state_dict(), "conv_stem.weight"
        name = "timm/efficientnet_lite0"
    path = tmp_path / f"{source}.safetensors"
    save_file(state, str(path))
    return path, state, first, name


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_one_channel_kernel_is_the_sum_and_grey_inputs_give_the_rgb_models_output(
    tmp_path: Path, source: str
) -> None:
    path, state, first, name = _weights(tmp_path, source)
    grey = tk.build_model(name, num_classes=3, pretrained=path, in_chans=1).eval()
    rgb = tk.build_model(name, num_classes=3, pretrained=path).eval()
    grey.head.load_state_dict(rgb.head.state_dict())
    kernel = grey.backbone.state_dict()[f"body.{first}"]
    assert kernel.shape == (state[first].shape[0], 1, *state[first].shape[2:])
    assert torch.equal(kernel, state[first].sum(1, keepdim=True))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_four_channels_repeat_the_kernel_scaled_by_three_quarters(tmp_path: Path, source: str) -> None:
    path, state, first, name = _weights(tmp_path, source)
    model = tk.build_model(name, num_classes=2, pretrained=path, in_chans=4)
    kernel, original = model.backbone.state_dict()[f"body.{first}"], state[first]
    assert kernel.shape[1] == 4
    assert torch.allclose(kernel[:, :3], original * 0.75) and torch.allclose(
        kernel[:, 3], original[:, 0] * 0.75
    )
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_pretrained_true_adapts_the_cached_file_too(tmp_path: Path, monkeypatch, source: str) -> None:
    """``pretrained=True`` resolves a file in the hub cache, then loads it as a path: both adapt."""
    path, state, first, name = _weights(tmp_path, source)
    import transferkit.models.backbones.timm as timm_backbones
    import transferkit.models.backbones.torchvision as tv_backbones

    monkeypatch.setattr(tv_backbones, "fetch_url", lambda url, model: path)
    monkeypatch.setattr(timm_backbones, "fetch_hf", lambda repo, model, filenames: path)
    model = tk.build_model(name, num_classes=2, pretrained=True, in_chans=1)
    assert torch.equal(model.backbone.state_dict()[f"body.{first}"], state[first].sum(1, keepdim=True))


def test_adapt_input_conv_keeps_a_matching_kernel_and_refuses_bad_input() -> None:
    w = torch.randn(8, 3, 3, 3, dtype=torch.float16)
    assert adapt_input_conv(w, 3) is w
    assert adapt_input_conv(w, 2).dtype == torch.float16
    assert torch.allclose(adapt_input_conv(w, 2).float(), w[:, :2].float() * 1.5, atol=1e-2)
    with pytest.raises(ValueError, match=r"\[out, in, kh, kw\]"):
        adapt_input_conv(torch.randn(8, 3), 1)
    with pytest.raises(ValueError, match="in_chans must be an int >= 1"):
        adapt_input_conv(w, 0)


def test_a_file_of_another_variant_still_names_the_mismatch(tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.randn(64, 32, 3, 3)
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    with pytest.raises(tk.WeightsMismatchError, match="'layer1.0.conv1.weight' is \\(64, 32, 3, 3\\)"):
        tk.build_model("resnet18", num_classes=2, pretrained=path, in_chans=1)


@pytest.mark.parametrize("in_chans", [1, 2, 4, 6])
def test_timms_adaptation_gives_the_same_kernels_as_the_torchvision_path(in_chans: int) -> None:
    """timm backbones adapt through timm's loader, torchvision ones through ours: one behaviour."""
    from timm.models import adapt_input_conv as timm_adapt

    w = torch.randn(16, 3, 3, 3)
    assert torch.allclose(adapt_input_conv(w, in_chans), timm_adapt(in_chans, w.clone()))
