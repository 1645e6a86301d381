"""ViT-style backbones (one stride) through the necks and heads: ViTDet's simple pyramid (strides, sizes for
patch 14, feature_info, pruning), its automatic choice and config round trip, training through the Trainer
for segmentation and detection, inputs at other sizes than the pretrained one, prefix tokens kept out of
the maps, timm's blocks, and the feature cache."""

from __future__ import annotations

import functools
import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from transferkit import FeatureInfo, Trainer, build_model, load_model
from transferkit.data import SyntheticShapes, SyntheticShapesDetection
from transferkit.models.backbones import create_backbone
from transferkit.models.necks import SimplePyramid, SimplePyramidFirst
from transferkit.tasks import get_task

VIT = "timm/vit_tiny_patch16_224"
DEIT = "timm/deit_tiny_patch16_224"
DINO = "timm/vit_small_patch14_reg4_dinov2"  # the smallest DINOv2 with registers; built 2 blocks deep
SIZE = 64
SMALL = {  # the smallest head settings that keep each head's parts
    "fcn": {"hidden_channels": 32},
    "deeplabv3plus": {"hidden_channels": 32, "skip_channels": 16},
    "fcos": {"detections_per_img": 20, "num_convs": 1, "score_thresh": 0.0},  # boxes to check
    "yolo": {"width": 32, "score_thresh": 0.001},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _dino() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(DINO, pretrained=False, depth=2, out_indices=(0, 1))


def _no_grad(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def _segmentation_loader(size: int = SIZE) -> DataLoader:
    return DataLoader(SyntheticShapes(4, image_size=size, task="segmentation"), batch_size=2)


def _detection_loader(size: int = SIZE) -> DataLoader:
    shapes = SyntheticShapesDetection(4, image_size=size)
    return DataLoader(shapes, batch_size=2, collate_fn=get_task("detection").collate_fn)


# ------------------------------------------------------------------------------------ the neck itself
def test_simple_pyramid_gives_strides_4_to_32_at_the_input_size() -> None:
    # (backbone stride, input side): ViT-16 at its pretrained grid and smaller, DINOv2's patch 14, odd grids
    for stride, side in [(16, 64), (16, 96), (16, 48), (14, 224), (14, 98), (8, 64)]:
        neck = SimplePyramid(FeatureInfo(channels=(24, 24), reductions=(stride, stride)), out_channels=8)
        tokens = torch.randn(2, 24, side // stride, side // stride)
        out = neck([torch.randn(1), tokens])  # only the last level is read
        neck.feature_info.check(out, (side, side))
        assert [f.shape[-1] for f in out] == [-(-side // s) for s in (4, 8, 16, 32)], (stride, side)
        assert all(f.shape[:2] == (2, 8) for f in out)
    assert [f.shape[-1] for f in SimplePyramid(FeatureInfo((6,), (14,)))([torch.randn(1, 6, 16, 16)])] == [
        56, 28, 14, 7,
    ]  # fmt: skip


def test_simple_pyramid_paths_are_exact_for_stride_16_and_resized_for_14() -> None:
    vit = SimplePyramid(FeatureInfo(channels=(32,), reductions=(16,)))
    kinds = [[type(m).__name__ for m in level.rescale.modules()] for level in vit.levels.values()]
    assert kinds[0] == ["Sequential", "ConvTranspose2d", "LayerNorm2d", "GELU", "ConvTranspose2d"]
    assert kinds[1:] == [["Sequential", "ConvTranspose2d"], ["Identity"], ["MaxPool2d"]]
    assert all(level.exact for level in vit.levels.values())  # no interpolation in the stride-16 graph
    assert not any(level.exact for level in SimplePyramid(FeatureInfo((32,), (14,))).levels.values())
    custom = SimplePyramid(FeatureInfo((32,), (16,)), out_channels=16, strides=(8, 16, 32, 64))
    assert custom.feature_info == FeatureInfo((16,) * 4, (8, 16, 32, 64))
    for bad in [{"strides": (8, 4)}, {"strides": ()}, {"strides": (4.0, 8)}, {"out_channels": 0}]:
        with pytest.raises(ValueError, match="strides must be|out_channels must be"):
            SimplePyramid(FeatureInfo((32,), (16,)), **bad)


# ------------------------------------------------------------------------------- the automatic choice
@pytest.mark.parametrize("head", ["fcn", "deeplabv3plus", "fcos", "yolo"])
def test_a_vit_gets_the_simple_pyramid_trains_and_answers_at_other_sizes(head: str) -> None:
    torch.manual_seed(0)
    classes = 3 if head in ("fcos", "yolo") else 4  # the shapes, and the background of the masks
    model = build_model(VIT, head=head, num_classes=classes, pretrained=False, head_kwargs=SMALL[head])
    assert model.config["neck"] == "simple_pyramid" and isinstance(model.neck, SimplePyramid)
    assert set(model.neck.levels) == {str(i) for i in model.head.levels}  # pruned to what the head reads
    rebuilt = build_model(**model.config)
    assert type(rebuilt.neck) is SimplePyramid and rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    detection = model.task == "detection"
    loader = _detection_loader() if detection else _segmentation_loader()
    history = Trainer(model, epochs=1, progress=False).fit(loader)
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
    model.eval()
    for side in (SIZE, 96):  # the ViT was built for 224 px: position embeddings resampled per input
        with torch.no_grad():
            out = model(torch.randn(2, 3, side, side))
        if detection:
            assert len(out) == 2 and all(len(d["boxes"]) for d in out)
            assert all((d["boxes"] >= 0).all() and (d["boxes"] <= side).all() for d in out)
        else:
            assert out.shape == (2, classes, side, side)


@pytest.mark.parametrize("name", [DEIT, DINO])
def test_deit_and_dinov2_train_every_pyramid_head_at_their_sizes(name: str) -> None:
    side = 56 if name == DINO else 48  # multiples of the patch (14, 16), not the pretrained 224 / 518
    for head in SMALL:
        torch.manual_seed(0)
        backbone = (
            create_backbone(DINO, pretrained=False, depth=2, out_indices=(0, 1))
            if name == DINO
            else create_backbone(DEIT, pretrained=False)
        )
        detection = head in ("fcos", "yolo")
        classes = 3 if detection else 4
        model = build_model(backbone, head=head, num_classes=classes, head_kwargs=SMALL[head])
        assert isinstance(model.neck, SimplePyramid), (name, head)
        loader = _detection_loader(side) if detection else _segmentation_loader(side)
        history = Trainer(model, epochs=1, progress=False).fit(loader)
        assert torch.isfinite(torch.tensor(history[0]["train_loss"])), (name, head)
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, side, side))
        if detection:
            assert all((d["boxes"] >= 0).all() and (d["boxes"] <= side).all() for d in out)
        else:
            assert out.shape == (1, classes, side, side), (name, head)


def test_other_necks_read_the_simple_pyramid_and_linear_keeps_the_maps() -> None:
    backbone = create_backbone(DEIT, pretrained=False, img_size=32)
    model = build_model(backbone, neck="aspp", head="deeplabv3plus", num_classes=3, head_kwargs=SMALL["fcn"])
    assert isinstance(model.neck, SimplePyramidFirst) and model.config["neck"] == "aspp"
    assert sorted(model.neck.pyramid.levels) == ["0", "3"]  # the decoder's stride-4 skip, ASPP on stride 32
    assert model.neck.neck.rates == (3, 6, 9)  # from the pyramid's stride 32
    model.train()(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert not _no_grad(model)
    pan = build_model(backbone, neck="pan", head="yolo", num_classes=3, head_kwargs=SMALL["yolo"])
    assert pan.head.strides == [8, 16, 32] and pan.levels_read == {len(backbone.feature_info) - 1}
    classifier = build_model(backbone, head="linear", num_classes=3)
    assert classifier.config["neck"] == "identity" and classifier.neck.feature_info == backbone.feature_info
    cnn = build_model("resnet18", head="fcn", num_classes=3, pretrained=False)
    assert cnn.config["neck"] == "identity"  # several strides: nothing to add


# ------------------------------------------------------------------------------- timm's ViTs
def test_dinov2_registers_stay_out_of_the_maps_and_blocks_follow_timm() -> None:
    backbone = _dino()
    vit = backbone.body.model
    assert vit.num_prefix_tokens == 5  # the class token and 4 registers
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for block in vit.blocks:
            tokens = block(tokens)
        maps = backbone(x)
    patches = tokens[:, 5:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps[-1], patches)
    assert list(backbone.blocks) == ["stem", "blocks.0", "blocks.1"]
    stem = {"cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert set(backbone.blocks["stem"]) == {f"body.model.{n}" for n in stem}
    model = build_model(backbone, head="fcn", num_classes=3, head_kwargs=SMALL["fcn"])
    assert backbone.feature_info.reductions == (14, 14) and backbone.input_multiple == 14
    out = model(torch.randn(1, 3, 112, 112))
    assert out.shape == (1, 3, 112, 112)
    levels = model.neck([None, torch.randn(1, 384, 8, 8)])
    assert [None if f is None else f.shape[-1] for f in levels] == [None, 14, 7, 4]  # 112 / (8, 16, 32)
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.randn(1, 3, 64, 64))


def test_pretrained_weights_work_at_other_sizes_and_a_fixed_size_can_be_asked_for(tmp_path) -> None:
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224").state_dict()  # pretrained at 224 px: 14x14 positions
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "vit.safetensors")
    model = build_model(VIT, head="fcn", num_classes=2, pretrained=str(tmp_path / "vit.safetensors"))
    assert model.config["backbone_kwargs"] == {"dynamic_img_size": True}
    assert torch.equal(model.backbone.body.model.pos_embed, state["pos_embed"])
    assert model.backbone.fixed_input_size is None
    assert model.backbone.data_config["input_size"] == (3, 224, 224)
    for side in (64, 96):
        assert model(torch.randn(1, 3, side, side)).shape == (1, 2, side, side)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 60, 60))
    fixed = create_backbone(VIT, pretrained=False, dynamic_img_size=False)
    assert fixed.fixed_input_size == 224 and fixed.config["dynamic_img_size"] is False
    with pytest.raises(ValueError, match="only takes 224x224"):
        fixed(torch.randn(1, 3, 64, 64))
    with torch.device("meta"):  # PiT has no dynamic_img_size: built without it, and keeps its one size
        pit = create_backbone("timm/pit_ti_224", pretrained=False)
    assert pit.fixed_input_size == 224 and "dynamic_img_size" not in pit.config


def test_feature_cache_and_save_load_hold_for_a_vit(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(VIT, head="fcn", num_classes=4, pretrained=False, head_kwargs=SMALL["fcn"])
    model.freeze()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    Trainer(model, epochs=2, progress=False, cache_features=True).fit(_segmentation_loader(32))
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())
    model.save(tmp_path / "vit")
    again = load_model(tmp_path / "vit").eval()
    assert again.config["neck"] == "simple_pyramid" and isinstance(again.neck, SimplePyramid)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x), atol=0, rtol=0)


def test_a_vit_saved_without_the_pyramid_names_why_it_no_longer_loads(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = build_model(VIT, head="fcos", num_classes=3, pretrained=False, head_kwargs=SMALL["fcos"])
    model.save(tmp_path)
    weights = tmp_path / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["config"])
    config["neck"] = "identity"  # what an earlier version saved for this model
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"neck='identity' .* now builds as neck='simple_pyramid'.*'fcos'"):
        load_model(tmp_path)


def test_a_vit_fine_tunes_with_layer_decay_by_default_and_a_cnn_without(tmp_path) -> None:
    torch.manual_seed(0)
    save_file(timm.create_model(VIT.removeprefix("timm/")).state_dict(), tmp_path / "vit.safetensors")
    vit = build_model(VIT, num_classes=2, pretrained=str(tmp_path / "vit.safetensors"))
    vit.unfreeze()
    rates = {g["name"]: g["lr"] for g in Trainer(vit, lr=1e-3, progress=False).optimizer.param_groups}
    blocks = list(vit.blocks)
    assert len(blocks) == 13  # the stem, then one per transformer block
    assert rates["head"] == 1e-3
    for i, block in enumerate(blocks):  # block i of B at lr * 0.75 ** (B - i): the stem lowest
        assert rates[f"backbone.{block}"] == pytest.approx(1e-3 * 0.75 ** (len(blocks) - i))
    given = Trainer(vit, lr=1e-3, layer_decay=1.0, progress=False).optimizer.param_groups
    assert {g["lr"] for g in given} == {1e-3}  # 1 turns it off
    scratch = build_model(VIT, num_classes=2, pretrained=False)  # from random weights: not fine-tuning
    assert {g["lr"] for g in Trainer(scratch, lr=1e-3, progress=False).optimizer.param_groups} == {1e-3}
    cnn = build_model("resnet18", num_classes=2, pretrained=False)
    cnn.unfreeze()
    assert {g["lr"] for g in Trainer(cnn, lr=1e-3, progress=False).optimizer.param_groups} == {1e-3}


@pytest.mark.parametrize("backbone", ["vit", "dinov2"])
def test_a_vit_splits_at_every_block_exactly(backbone: str) -> None:
    torch.manual_seed(0)
    if backbone == "vit":
        body, x = build_model(VIT, num_classes=2, pretrained=False).backbone, torch.randn(2, 3, 48, 80)
    else:  # registers, patch 14, a level taken before the cut and one after it
        body, x = _dino(), torch.randn(2, 3, 56, 84)
    body.eval()
    with torch.no_grad():
        whole = body(x)
        for k in range(1, len(body.blocks)):
            prefix, suffix = body.split(k)
            parts = suffix(*prefix(x))
            assert len(parts) == len(whole)
            for a, b in zip(parts, whole, strict=True):
                torch.testing.assert_close(a, b, atol=0, rtol=0)
        prefix, suffix = body.split(2, levels={len(whole) - 1})
        assert suffix(*prefix(x))[0] is None  # a level nobody reads is not kept


@pytest.mark.parametrize("policy", ["lora", "last_n"])
def test_the_feature_cache_serves_a_vits_frozen_prefix(policy: str) -> None:
    if policy == "lora":
        pytest.importorskip("peft")
    data = DataLoader(SyntheticShapes(8, image_size=32), batch_size=4)
    losses = []
    for cache in (True, False):
        torch.manual_seed(0)
        model = build_model(VIT, num_classes=3, pretrained=False)
        model.freeze(policy, **({"n": 3} if policy == "last_n" else {}))
        history = Trainer(model, epochs=2, progress=False, seed=0, cache_features=cache).fit(data)
        losses.append([row["train_loss"] for row in history])
    assert losses[0] == losses[1]  # the cached prefix changes nothing
