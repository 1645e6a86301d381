"""Necks (identity, fpn_lite, pan, aspp, simple_pyramid) with heads (linear, fcn, deeplabv3plus) on many
backbones (the ViT's own cases are in tests/test_vit.py), and
output_stride: shapes, gradients, refusals, real strides, exact freezing, the feature cache, the
reference ASPP, and learning."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from transferkit import FeatureInfo, Trainer, build_model
from transferkit.data import SyntheticShapes
from transferkit.models.backbones import create_backbone
from transferkit.models.necks import PAN, ASPPNeck, FPNLite
from transferkit.tasks.metrics import confusion_matrix, miou_from_confusion

SIZE = 32
NECKS = ["identity", "fpn_lite", "pan", "aspp", "simple_pyramid"]
HEADS = ["linear", "fcn", "deeplabv3plus"]
# The acceptance list; resnet50 at both dilated strides, the ViT built for SIZE px inputs.
BACKBONES = {
    "resnet18": {},
    "resnet50@8": {"name": "resnet50", "output_stride": 8},
    "resnet50@16": {"name": "resnet50", "output_stride": 16},
    "mobilenet_v3_large": {},
    "timm/convnext_atto": {},
    "timm/efficientnet_b0": {},
    "timm/vit_tiny_patch16_224": {"img_size": SIZE},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _backbone(key: str) -> nn.Module:
    """Each backbone built once; the models below share it (their gradients are reset per test)."""
    kwargs = dict(BACKBONES[key])
    torch.manual_seed(0)
    return create_backbone(kwargs.pop("name", key), pretrained=False, **kwargs)


def _no_grad_params(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


# ------------------------------------------------------------------------------------ every pairing
@pytest.mark.parametrize("neck", NECKS)
@pytest.mark.parametrize("key", list(BACKBONES))
def test_every_neck_with_every_head_gives_the_output_and_every_gradient(key: str, neck: str) -> None:
    backbone = _backbone(key)
    x = torch.randn(2, 3, SIZE, SIZE)
    for head in HEADS:  # the ViT's one stride: the heads that fuse strides read the simple pyramid
        backbone.zero_grad(set_to_none=True)
        model = build_model(backbone, neck=neck, head=head, num_classes=3).train()
        out = model(x)
        assert out.shape == ((2, 3) if head == "linear" else (2, 3, SIZE, SIZE)), (neck, head)
        out.square().mean().backward()
        assert not _no_grad_params(model), f"{neck}+{head}: no gradient for {_no_grad_params(model)[:4]}"


def test_deeplabv3plus_without_a_stride_4_level_says_what_works() -> None:
    backbone = create_backbone("resnet18", pretrained=False, out_indices=(3, 4))
    with pytest.raises(ValueError, match=r"strides \(16, 32\)\. Use head='fcn'.*neck='simple_pyramid'"):
        build_model(backbone, neck="aspp", head="deeplabv3plus", num_classes=2)


def test_pyramids_drop_what_the_head_never_reads() -> None:
    info = FeatureInfo(channels=(4, 8, 16, 32), reductions=(2, 4, 8, 16))
    fpn = build_model(_backbone("resnet18"), neck="fpn_lite", head="fcn", num_classes=2).neck
    assert sorted(fpn.smooth) == ["2", "3", "4"] and sorted(fpn.lateral) == ["2", "3", "4"]
    pan = PAN(info, out_channels=8)
    pan.prune({1})  # a head reading level 1 only: the bottom-up path stops there
    feats = [torch.randn(1, c, 32 // r, 32 // r) for c, r in zip(info.channels, info.reductions)]
    out = pan(feats)
    assert [None if f is None else tuple(f.shape) for f in out] == [(1, 8, 16, 16), (1, 8, 8, 8), None, None]
    out[1].sum().backward()
    assert not _no_grad_params(pan) and len(pan.down) == len(pan.fuse) == 1
    assert pan.levels_read({1}) == {0, 1, 2, 3}  # the top-down path still starts at the coarsest
    fpn = FPNLite(info, out_channels=8)
    fpn.prune({2, 3})
    assert fpn.levels_read({2, 3}) == {2, 3}


def test_pan_on_equal_strides_keeps_the_size() -> None:
    neck = PAN(FeatureInfo(channels=(6, 6, 6), reductions=(16, 16, 16)), out_channels=4)
    assert [conv.stride for conv in neck.down] == [(1, 1), (1, 1)]
    assert all(f.shape == (2, 4, 3, 3) for f in neck([torch.randn(2, 6, 3, 3)] * 3))


# ----------------------------------------------------------------------------------- output_stride
@pytest.mark.parametrize("name", ["resnet50", "timm/convnext_atto"])
def test_output_stride_reports_the_real_strides_and_keeps_blocks(name: str) -> None:
    native = create_backbone(name, pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    for stride in (8, 16, 32):
        backbone = create_backbone(name, pretrained=False, output_stride=stride)
        features = backbone(x)
        backbone.feature_info.check(features, (64, 64))
        assert backbone.feature_info.reductions == tuple(64 // f.shape[-1] for f in features)
        assert backbone.feature_info.reductions[-1] == stride
        assert len(backbone.feature_info) == len(native.feature_info)  # no level lost to a shared stride
        assert backbone.blocks == native.blocks


def test_resnet50_at_output_stride_8_levels() -> None:
    assert _backbone("resnet50@8").feature_info.reductions == (2, 4, 8, 8, 8)
    assert _backbone("resnet50@16").feature_info.reductions == (2, 4, 8, 16, 16)
    assert _backbone("resnet50@8").feature_info.channels == (64, 256, 512, 1024, 2048)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"backbone": "resnet18", "output_stride": 8},
            r"torchvision/resnet18 cannot give output_stride=8.*resnet50",
        ),
        ({"backbone": "mobilenet_v3_large", "output_stride": 16}, "Bottleneck blocks"),
        (
            {"backbone": "timm/vit_tiny_patch16_224", "output_stride": 8},
            r"stride 16 .*leave output_stride unset",
        ),
        ({"output_stride": 4}, "output_stride must be 8, 16 or 32"),
        ({"backbone_kwargs": {"output_stride": 8}}, "pass output_stride to build_model directly"),
        (
            {"output_stride": 8, "backbone_kwargs": {"replace_stride_with_dilation": [False, True, True]}},
            "not both",
        ),
    ],
)
def test_output_stride_refusals_say_what_works(kwargs: dict, match: str) -> None:
    args = {"backbone": "resnet50", "num_classes": 2, "pretrained": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_model(**args)


def test_output_stride_is_refused_for_a_backbone_module() -> None:
    with pytest.raises(ValueError, match="backbones built by name"):
        build_model(_backbone("resnet18"), num_classes=2, output_stride=16)


def test_output_stride_round_trips_through_save_and_load(tmp_path) -> None:
    model = build_model(
        "resnet50", neck="aspp", head="deeplabv3plus", num_classes=3, pretrained=False, output_stride=16
    ).eval()
    assert model.config["output_stride"] == 16 and model.config["backbone_kwargs"] == {}
    assert model.neck.rates == (6, 12, 18)
    rebuilt = build_model(**json.loads(json.dumps(model.config)))
    assert rebuilt.backbone.feature_info == model.backbone.feature_info and rebuilt.config == model.config
    model.save(tmp_path / "run")
    from transferkit import load_model

    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(load_model(tmp_path / "run").eval()(x), model(x))


def test_freezing_a_dilated_backbone_is_exact() -> None:
    small = {"neck_kwargs": {"out_channels": 32}, "head_kwargs": {"hidden_channels": 32}}
    model = build_model(
        "resnet50",
        neck="aspp",
        head="deeplabv3plus",
        num_classes=3,
        pretrained=False,
        output_stride=8,
        **small,
    )
    model.freeze("last_n", n=3)
    assert model.trainable_blocks == ["layer4.0", "layer4.1", "layer4.2"]
    frozen = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.") and "layer4" not in k
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, SIZE, SIZE)).square().mean().backward()
        optimizer.step()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not torch.equal(state["backbone.body.layer4.0.bn1.running_mean"], torch.zeros(512))


# ----------------------------------------------------------------------------------- feature cache
@functools.cache
def _shapes(n: int, seed: int = 0) -> TensorDataset:
    ds = SyntheticShapes(n, image_size=SIZE, num_classes=3, task="segmentation", seed=seed)
    images, masks = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(np.stack(masks)))


@pytest.mark.parametrize(
    ("neck", "head", "policy"),
    [("fpn_lite", "deeplabv3plus", "last_n"), ("pan", "fcn", "last_n"), ("aspp", "deeplabv3plus", "all")],
)
def test_cached_training_matches_uncached_for_each_neck(neck: str, head: str, policy: str) -> None:
    models, histories = [], []
    for cache in (False, True):
        torch.manual_seed(0)
        small = {"neck_kwargs": {"out_channels": 32}, "head_kwargs": {"dropout": 0.3}}
        model = build_model("resnet18", neck=neck, head=head, num_classes=4, pretrained=False, **small)
        model.freeze(policy, **({"n": 2} if policy == "last_n" else {}))
        loaders = {
            "train": DataLoader(_shapes(16), batch_size=8),
            "val": DataLoader(_shapes(8, 1), batch_size=4),
        }
        torch.manual_seed(2)
        trainer = Trainer(model, epochs=2, lr=3e-3, progress=False, cache_features=cache)
        histories.append(trainer.fit(loaders))
        models.append(model)
    plain, cached = (m.state_dict() for m in models)
    worst = max(
        (plain[k].double() - cached[k].double()).abs().max().item() for k in plain if plain[k].numel()
    )
    assert worst <= 1e-5
    for a, b in zip(*histories, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["val_miou"] == pytest.approx(a["val_miou"], abs=1e-6)


# ------------------------------------------------------------------------------------ ASPP itself
def test_aspp_matches_torchvision_deeplabv3_aspp() -> None:
    """DeepLabV3's settings (2048 channels at stride 8: rates 12, 24, 36; 256 out) against torchvision's."""
    torch.manual_seed(0)
    reference = TorchvisionASPP(2048, [12, 24, 36], out_channels=256)
    with torch.no_grad():  # statistics and affine parameters off their defaults, so they all count
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    neck = ASPPNeck(FeatureInfo(channels=(2048,), reductions=(8,)))
    assert neck.rates == (12, 24, 36)
    count = sum(p.numel() for p in neck.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == 15_535_104
    neck.aspp.load_state_dict(reference.state_dict())  # the same layout: strict
    reference.eval(), neck.eval()
    x = torch.randn(2, 2048, 9, 11)
    torch.testing.assert_close(neck([x])[0], reference(x), atol=1e-6, rtol=0)


def test_aspp_trains_on_a_batch_of_one() -> None:
    neck = ASPPNeck(FeatureInfo(channels=(16,), reductions=(32,)), out_channels=8).train()
    pool_norm = neck.aspp.convs[-1][2]
    before = pool_norm.running_mean.clone()
    out = neck([torch.randn(1, 16, 3, 3)])[0]
    out.sum().backward()
    assert out.shape == (1, 8, 3, 3) and not _no_grad_params(neck)
    assert torch.equal(pool_norm.running_mean, before)  # no batch statistics to learn from
    assert neck.rates == (3, 6, 9)
    with pytest.raises(ValueError, match="rates must be"):
        ASPPNeck(FeatureInfo(channels=(16,), reductions=(32,)), rates=(0, 2))


# ------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize(("neck", "head"), [("identity", "fcn"), ("aspp", "deeplabv3plus"), ("pan", "fcn")])
def test_each_segmentation_pairing_learns(neck: str, head: str) -> None:
    images, masks = _shapes(8).tensors
    torch.manual_seed(0)
    small = {
        "neck_kwargs": {"out_channels": 64} if neck != "identity" else {},
        "head_kwargs": {"dropout": 0.0},
    }
    model = build_model("resnet18", neck=neck, head=head, num_classes=4, pretrained=False, **small)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(model.train()(images), masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        preds = model.eval()(images).argmax(1)
    miou = miou_from_confusion(confusion_matrix(preds, masks, 4))
    floor = miou_from_confusion(confusion_matrix(torch.zeros_like(masks), masks, 4))  # all background
    assert losses[-1] < 0.5 * losses[0], losses
    assert miou > floor + 0.15, (miou, floor)


def test_segmentation_benchmark_smoke_run(capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_segmentation.py"
    spec = importlib.util.spec_from_file_location("bench_segmentation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    args = [
        "--size",
        "32",
        "--train",
        "8",
        "--val",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
    ]
    try:
        rows = bench.main(args)
    finally:
        torch.set_num_threads(threads)
    assert [(r["neck"], r["head"]) for r in rows] == [
        ("identity", "fcn"),
        ("aspp", "deeplabv3plus"),
        ("pan", "fcn"),
    ]
    assert all(0.0 <= r["best_val_miou"] <= 1.0 and r["seconds"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| neck | head | params (M) | best val mIoU | final val mIoU | seconds |" in out
    assert "| all background |" in out
