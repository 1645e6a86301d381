"""Detection heads (fcos, retinanet, fasterrcnn, ssdlite, yolo) on transferkit backbones and necks: a training
step gives a finite loss dict and a gradient on every trainable parameter, eval gives boxes inside the
image, save/load keeps the predictions, and the torchvision defaults that go wrong on a custom backbone
(anchor strides, RoI scales, label offsets, the ViT's equal strides) are set from ``feature_info``."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from transferkit import FeatureInfo, build_model, list_heads, load_model
from transferkit.models.backbones import create_backbone
from transferkit.models.heads.detection import FasterRCNNHead, FCOSHead, RetinaNetHead, SSDLiteHead
from transferkit.models.heads.detection.parts import _LevelAnchors, detection_levels

SIZE = 64
HEADS = ["fcos", "retinanet", "fasterrcnn", "ssdlite", "yolo"]
SMALL = {
    "fasterrcnn": {"representation_size": 64, "proposals": [64, 32], "box_batch_size_per_image": 64},
    # below their class prior (0.01): an untrained head gives boxes to compare
    "retinanet": {"score_thresh": 0.001},
    "yolo": {"score_thresh": 0.001},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def _backbone(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, pretrained=False, **({"img_size": SIZE} if "vit" in name else {}))


def _model(backbone: str, head: str, neck: str = "fpn_lite", **kwargs):
    torch.manual_seed(0)
    return build_model(
        _backbone(backbone) if kwargs.pop("shared", True) else backbone,
        neck=neck,
        head=head,
        num_classes=3,
        neck_kwargs={"out_channels": 64} if neck in ("fpn_lite", "pan") else None,
        head_kwargs=SMALL.get(head),
        **kwargs,
    )


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [34.0, 30.0, 60.0, 62.0]]),
            "labels": torch.tensor([2, 0]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]


def _step_and_detect(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    x = torch.randn(2, 3, SIZE, SIZE)
    model.zero_grad(set_to_none=True)
    losses = model.train()(x, _targets())
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:4]}"
    with torch.no_grad():
        out = model.eval()(x)
    assert len(out) == 2
    assert sum(len(d["boxes"]) for d in out), "no box to check"
    for d in out:
        assert set(d) == {"boxes", "scores", "labels"} and d["boxes"].shape[1:] == (4,)
        assert (d["boxes"] >= 0).all() and (d["boxes"][:, 2:] <= SIZE).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()
    return out


def test_the_five_heads_are_registered() -> None:
    assert set(HEADS) <= set(list_heads())
    assert {build_model("resnet18", neck="fpn_lite", head=h, num_classes=2, pretrained=False).task
            for h in ("fcos", "ssdlite")} == {"detection"}  # fmt: skip


@pytest.mark.parametrize("head", HEADS)
def test_each_head_on_resnet18_fpn_lite_trains_detects_and_reloads(head: str, tmp_path) -> None:
    model = _model("resnet18", head, shared=False, pretrained=False)
    _step_and_detect(model)
    model.save(tmp_path)
    again = load_model(tmp_path).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        first, second = model.eval()(x)[0], again(x)[0]
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize(
    "backbone, neck",
    [("resnet18", "pan"), ("timm/convnext_atto", "fpn_lite"), ("mobilenet_v3_large", "fpn_lite")],
)
@pytest.mark.parametrize("head", ["fcos", "retinanet", "yolo"])
def test_dense_heads_on_other_backbones_and_pan(backbone: str, neck: str, head: str) -> None:
    _step_and_detect(_model(backbone, head, neck=neck))


@pytest.mark.parametrize("head", ["fcos", "fasterrcnn"])
def test_a_vit_works_through_the_simple_pyramid(head: str) -> None:
    model = _model("timm/vit_tiny_patch16_224", head, neck="identity")
    assert model.config["neck"] == "simple_pyramid"  # built in place of identity: one stride, 16
    assert model.head.strides == ([8, 16, 32, 64, 128] if head == "fcos" else [4, 8, 16, 32, 64])
    _step_and_detect(model)


def test_yolo_reads_levels_of_any_channels_and_refuses_a_single_stride() -> None:
    model = _model("resnet18", "yolo", neck="identity")  # 128, 256, 512 channels: one branch per level
    assert model.head.strides == [8, 16, 32]
    _step_and_detect(model)
    shallow = create_backbone("resnet18", pretrained=False, out_indices=(1, 2))  # strides 4 and 8
    with pytest.raises(ValueError, match=r"one level of stride 8 .*neck='simple_pyramid'.*head='fcos'"):
        build_model(shallow, neck="identity", head="yolo", num_classes=2)


def test_uneven_channels_are_refused_with_what_works() -> None:
    with pytest.raises(ValueError, match=r"equal channels.*neck='fpn_lite'.*head='ssdlite' or 'yolo'"):
        build_model(_backbone("resnet18"), neck="identity", head="fcos", num_classes=2)
    model = build_model(_backbone("resnet18"), neck="identity", head="ssdlite", num_classes=2)
    assert model.head.levels == [3, 4]  # ssdlite takes any channels


def test_fcos_group_norm_needs_a_multiple_of_32_channels() -> None:
    with pytest.raises(ValueError, match=r"GroupNorm.*out_channels"):
        build_model(
            _backbone("resnet18"),
            neck="fpn_lite",
            head="fcos",
            num_classes=2,
            neck_kwargs={"out_channels": 40},
        )


def test_fasterrcnn_refuses_strides_that_do_not_double() -> None:
    with pytest.raises(ValueError, match=r"strides that are powers of 2.*head='fcos'"):
        FasterRCNNHead(FeatureInfo((16, 16), (4, 12)), num_classes=2)


def test_training_mode_without_targets_says_what_to_do() -> None:
    model = _model("resnet18", "fcos").train()
    with pytest.raises(ValueError, match=r"no targets.*model\(images, targets\).*model\.eval\(\)"):
        model(torch.randn(1, 3, SIZE, SIZE))


# ------------------------------------------------------------------------- what is set from feature_info
def test_levels_skip_fine_ones_and_take_the_deepest_of_equal_strides() -> None:
    info = FeatureInfo((64, 64, 128, 256, 512), (2, 4, 8, 16, 32))
    assert detection_levels(info, 8) == [2, 3, 4] and detection_levels(info, 4) == [1, 2, 3, 4]
    assert detection_levels(FeatureInfo((8,), (4,)), 8) == [0]  # nothing that coarse: the coarsest


def test_anchors_sit_at_the_true_strides_where_torchvision_would_drift() -> None:
    generator = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
    ours = _LevelAnchors(generator, [8, 16, 32, 64])
    maps = [torch.zeros(1, 1, -(-100 // s), -(-100 // s)) for s in (8, 16, 32, 64)]  # a 100 px image
    images = ImageList(torch.zeros(1, 3, 100, 100), [(100, 100)])
    anchors = ours(images, maps)[0]
    counts = [m.shape[-1] ** 2 for m in maps]
    for level, (stride, block) in enumerate(zip((8, 16, 32, 64), anchors.split(counts))):
        centres = (block[:, 0] + block[:, 2]) / 2
        assert torch.equal(centres.unique(), torch.arange(maps[level].shape[-1]) * float(stride)), stride
        assert torch.equal(
            block[:, 2] - block[:, 0], torch.full((len(block),), float(stride))
        )  # fcos: size = stride
    drifted = generator(images, maps)[0].split(counts)[0]  # 100 // 13 = 7, not 8
    assert ((drifted[:, 0] + drifted[:, 2]) / 2).unique()[1] == 7.0


def test_fcos_anchor_sizes_equal_the_strides_including_p6_p7() -> None:
    head = FCOSHead(FeatureInfo((64, 64, 64), (8, 16, 32)), num_classes=2)
    assert head.strides == [8, 16, 32, 64, 128]
    assert [s[0] for s in head.detector.anchor_generator.sizes] == head.strides
    retina = RetinaNetHead(FeatureInfo((32, 32, 32), (8, 16, 32)), num_classes=2)
    assert retina.detector.anchor_generator.sizes[0][0] == 32.0  # torchvision's 32 px at stride 8


def test_fasterrcnn_roi_scales_and_background_come_from_the_head() -> None:
    head = FasterRCNNHead(FeatureInfo((32, 32, 32), (4, 8, 16)), num_classes=3, representation_size=32)
    assert head.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16]
    assert head.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert head.rpn.anchor_generator.strides == [4, 8, 16, 32]  # + the max-pool level
    ssd = SSDLiteHead(FeatureInfo((16, 24), (16, 32)), num_classes=3)
    assert ssd.detector.anchor_generator.steps == [16, 32, 64, 128]


def test_no_hidden_resize_or_normalisation() -> None:
    """The torchvision transform (resize to 800, second normalisation) is replaced, never run."""
    model = _model("resnet18", "retinanet")
    with pytest.raises(RuntimeError, match="not used"):
        model.head.detector.transform([torch.zeros(3, 8, 8)])
    model.eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        boxes = model(x)[0]["boxes"]
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 96).all()  # clipped to the input as given
