"""backbone.split(k): the prefix and suffix together compute the backbone exactly, at every block boundary."""

from __future__ import annotations

import functools

import pytest
import torch

from transferkit.models.backbones import create_backbone

SPLITTABLE = [
    "torchvision/resnet18",
    "torchvision/mobilenet_v3_small",
    "torchvision/regnet_x_400mf",
    "timm/resnet18",
    "timm/convnext_atto",
    "timm/regnetx_002",
]
UNSPLITTABLE = ["timm/efficientnet_b0", "timm/mobilenetv3_small_050", "torchvision/swin_t"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.lru_cache
def _backbone(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, pretrained=False).eval()


def _boundaries(num_blocks: int) -> list[int]:
    """Every boundary for small networks; first, a few inside and the end for deeper ones."""
    if num_blocks <= 14:
        return list(range(1, num_blocks + 1))
    return sorted({1, 2, num_blocks // 3, num_blocks // 2, num_blocks - 1, num_blocks})


@pytest.mark.parametrize("name", SPLITTABLE)
def test_suffix_of_prefix_equals_the_backbone_exactly(name: str) -> None:
    backbone = _backbone(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(x)
        for k in _boundaries(len(backbone.blocks)):
            prefix, suffix = backbone.split(k)
            state = prefix(x)
            assert isinstance(state, tuple)
            got = suffix(*state)
            assert len(got) == len(expected)
            for level, (a, b) in enumerate(zip(got, expected, strict=True)):
                assert torch.equal(a, b), f"{name}: split at block {k}, level {level} differs"


@pytest.mark.parametrize("name", SPLITTABLE)
def test_unread_levels_come_back_as_none(name: str) -> None:
    backbone = _backbone(name)
    x = torch.randn(2, 3, 64, 64)
    last = len(backbone.feature_info) - 1
    k = len(backbone.blocks) - 2
    prefix, suffix = backbone.split(k, levels={last})
    with torch.no_grad():
        got, expected = suffix(*prefix(x)), backbone(x)
    assert all(f is None for f in got[:last])
    assert torch.equal(got[last], expected[last])


@pytest.mark.parametrize("name", SPLITTABLE)
def test_prefix_holds_no_parameter_of_later_blocks(name: str) -> None:
    backbone = _backbone(name)
    named = dict(backbone.named_parameters())
    blocks = list(backbone.blocks.values())
    for k in _boundaries(len(blocks)):
        prefix, _ = backbone.split(k)
        later = {id(named[p]) for block in blocks[k:] for p in block}
        inside = [n for n, p in prefix.named_parameters() if id(p) in later]
        assert not inside, f"{name}: the prefix before block {k} holds {inside[:3]}"
        own = {id(p) for p in named.values()}  # ... and it shares the backbone's weights, never copies
        assert all(id(p) in own for p in prefix.parameters())


@pytest.mark.parametrize("name", UNSPLITTABLE)
def test_unsplittable_backbone_says_what_to_do(name: str) -> None:
    backbone = _backbone(name)
    with pytest.raises(NotImplementedError, match=rf"{name} cannot be split.*cache_features=False"):
        backbone.split(len(backbone.blocks) // 2)
