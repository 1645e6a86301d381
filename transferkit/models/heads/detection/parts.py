"""The glue the detection heads share: level selection, anchors at true strides, the train/eval contract.

See `transferkit.models.heads.detection` for the heads. Nothing here is a detector: these are the few pieces
between transferkit's feature levels and torchvision's detection modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ...features import FeatureInfo

__all__ = ["DetectionHead", "detection_levels"]

Detections = list[dict[str, Tensor]]


class _Unused(nn.Module):
    """Stands in for the backbone and transform of a torchvision detector: transferkit supplies both."""

    def __init__(self, out_channels: int = 0) -> None:
        super().__init__()
        self.out_channels = out_channels  # the torchvision constructors read it

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "this part of the torchvision detector is not used: transferkit's backbone and neck give the "
            "features, and its data pipeline resizes and normalises the images; call the TransferModel"
        )


class _LevelAnchors(nn.Module):
    """torchvision's `AnchorGenerator` laid out at the levels' true strides (from ``feature_info``).

    ``AnchorGenerator.forward`` derives each stride as ``image size // map size``, which is wrong for
    sizes that are not multiples of the coarsest stride and for the extra P6/P7 levels; the grid and the
    anchor shapes are still the generator's own.
    """

    def __init__(self, generator: AnchorGenerator, strides: Sequence[int]) -> None:
        super().__init__()
        self.generator, self.strides = generator, [int(s) for s in strides]

    def forward(self, images: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        device = feature_maps[0].device
        self.generator.set_cell_anchors(torch.float32, device)  # float32 even under autocast: pixels
        grids = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device), torch.tensor(s, device=device)] for s in self.strides]
        anchors = torch.cat(self.generator.grid_anchors(grids, strides))
        return [anchors for _ in images.image_sizes]


def detection_levels(feature_info: FeatureInfo, min_stride: int) -> list[int]:
    """The levels a detection head reads: one per distinct stride >= ``min_stride`` (the deepest of each).

    Levels of one stride give one level (a ViT's, when a head is built on it without the simple pyramid
    `build_model` puts in front). With no level that coarse, the coarsest level is used.

    Examples:
        >>> detection_levels(FeatureInfo((64, 64, 128, 256, 512), (2, 4, 8, 16, 32)), min_stride=8)
        [2, 3, 4]
        >>> detection_levels(FeatureInfo((192, 192, 192), (16, 16, 16)), min_stride=8)
        [2]
    """
    last_of_stride = {r: i for i, r in enumerate(feature_info.reductions) if r >= min_stride}
    return sorted(last_of_stride.values()) or [len(feature_info) - 1]


def _shared_channels(feature_info: FeatureInfo, levels: list[int], head: str) -> int:
    channels = {feature_info.channels[i] for i in levels}
    if len(channels) != 1:
        raise ValueError(
            f"head {head!r} shares one predictor across levels, so the levels it reads need equal channels, "
            f"but levels {levels} have {[feature_info.channels[i] for i in levels]}; use neck='fpn_lite' or "
            "neck='pan' (out_channels on every level), or head='ssdlite' or 'yolo' (any channels)"
        )
    return channels.pop()


def _targets_in(targets: Detections, offset: int) -> Detections:
    """Targets in torchvision's label convention (``offset`` 1 keeps class 0 for the background)."""
    return [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + offset} for t in targets]


class DetectionHead(nn.Module):
    """What the detection heads share: level selection, extra levels, the train/eval contract.

    Subclasses set ``levels``, ``strides`` (of every map the detector sees), ``extra`` and
    ``detections_per_img`` in their ``__init__`` and implement ``losses`` and ``detect``.
    """

    task = "detection"
    needs_pyramid = True  # on a one-stride backbone (a ViT), build_model adds the simple pyramid
    label_offset = 0  # 1 where torchvision's softmax keeps class 0 for the background
    levels: list[int]  # the feature levels read
    strides: list[int]  # of every map the detector sees, the extra levels' included
    extra: nn.Module | None  # torchvision's extra FPN block (P6/P7, max-pool), or None
    detections_per_img: int  # D, the rows per image of `detect_fixed`
    # Why an exported file of this head takes one image at a time and only ONNX holds it; None where
    # `detect_fixed` treats the whole batch at once (any batch size, every format). Export quotes it.
    export_limit: str | None = (
        "torchvision's post-processing loops over the images in Python and branches on the number of "
        "boxes: the ONNX exporter captures it for one image at a time (a file of batch size 1), torch.export "
        "cannot capture it, and a TorchScript trace would keep the traced number of images without a word; "
        "head='yolo' (batched post-processing) exports to .onnx, .pt2 and .ts with any batch size"
    )
    # The torchvision detector whose parts the subclass uses (FCOS, RetinaNet, SSD, FasterRCNN); torchvision
    # has no type information, so its classes are Any to mypy.
    detector: Any

    def _pyramid(self, features: list[Tensor]) -> list[Tensor]:
        maps = [features[i] for i in self.levels]
        if self.extra is not None:  # torchvision's extra FPN blocks take (results, inputs, names)
            maps, _ = self.extra(list(maps), list(maps), [str(i) for i in range(len(maps))])
        return maps

    def forward(
        self, features: list[Tensor], input_size: tuple[int, int], targets: Detections | None = None
    ) -> dict[str, Tensor] | Detections:
        """The loss dict (training, with targets) or one detection dict per image (eval)."""
        maps, size = self._pyramid(features), (int(input_size[0]), int(input_size[1]))
        if self.training:
            if targets is None:
                raise ValueError(
                    f"{type(self).__name__} is in training mode but got no targets: call "
                    "model(images, targets) with one {'boxes', 'labels'} dict per image, or model.eval() "
                    "for detections"
                )
            return self.losses(maps, size, _targets_in(targets, self.label_offset))
        return self._detections(maps, size)

    def detect_fixed(self, features: list[Tensor], input_size: tuple[int, int]) -> tuple[Tensor, ...]:
        """Detections as fixed-size tensors, as an exported file gives them: boxes ``[B, D, 4]``, scores
        ``[B, D]``, labels ``[B, D]`` (int64) and a count ``[B]``; the first ``count`` rows of each image
        are its detections (those of ``forward`` in eval mode), best first, the rest zero.
        ``D = detections_per_img``.

        Examples:
            >>> from transferkit.models.heads.detection import FCOSHead
            >>> head = FCOSHead(FeatureInfo((64, 64), (8, 16)), num_classes=3, detections_per_img=5).eval()
            >>> feats = [torch.randn(2, 64, 8, 8), torch.randn(2, 64, 4, 4)]
            >>> boxes, scores, labels, count = head.detect_fixed(feats, (64, 64))
            >>> boxes.shape, scores.shape, labels.shape, count.shape
            (torch.Size([2, 5, 4]), torch.Size([2, 5]), torch.Size([2, 5]), torch.Size([2]))
        """
        size = (int(input_size[0]), int(input_size[1]))
        rows = self.detections_per_img
        images = [
            (_padded(d["boxes"], rows), _padded(d["scores"], rows), _padded(d["labels"], rows),
             torch.ones_like(d["labels"]).sum())  # a sum, not len(): a trace keeps it data-dependent
            for d in self._detections(self._pyramid(features), size)
        ]  # fmt: skip
        return tuple(torch.stack(parts) for parts in zip(*images))

    def _detections(self, maps: list[Tensor], size: tuple[int, int]) -> Detections:
        return [{**d, "labels": d["labels"] - self.label_offset} for d in self.detect(maps, size)]

    def losses(self, maps: list[Tensor], size: tuple[int, int], targets: Detections) -> dict[str, Tensor]:
        raise NotImplementedError

    def detect(self, maps: list[Tensor], size: tuple[int, int]) -> Detections:
        raise NotImplementedError


def _padded(rows: Tensor, count: int) -> Tensor:
    """``rows`` (at most ``count`` of them) followed by zero rows up to ``count``, without reading its length
    (which a trace would keep as a constant)."""
    return torch.cat([rows, rows.new_zeros(count, *rows.shape[1:])])[:count]


def _class_wise_nms(
    boxes: Tensor, scores: Tensor, images: Tensor, labels: Tensor, size: tuple[int, int], iou_threshold: float
) -> Tensor:
    """NMS within each (image, class) of a batch, in one `torchvision.ops.nms` call: the kept indices, best
    first. ``boxes`` ``[K, 4]`` lie inside the ``size`` (H, W) image; ``images`` and ``labels`` are ``[K]``.

    As `torchvision.ops.batched_nms` keeps classes apart by moving their boxes, each box moves right by
    ``label`` image widths and down by ``image`` image heights, so boxes of different images or classes
    never overlap; moving along two axes keeps the coordinates small. Unlike ``batched_nms`` it does not
    branch on the number of boxes, which torch.export cannot capture.
    """
    step = boxes.new_tensor([size[1] + 1, size[0] + 1])
    shift = (torch.stack([labels, images], dim=1).to(boxes) * step).repeat(1, 2)
    # torchvision's shape function for nms promises at least two kept boxes, which a torch.export program
    # asserts when it runs: two boxes apart from all others (left of and above the images) and scored below
    # them all are always kept, and kept last
    apart = boxes.new_tensor([[-4.0, -4.0, -3.0, -3.0], [-2.0, -2.0, -1.0, -1.0]])
    kept = nms(
        torch.cat([boxes + shift, apart]), torch.cat([scores, scores.new_tensor([-2.0, -1.0])]), iou_threshold
    )
    return kept[:-2]


def _images(maps: list[Tensor], size: tuple[int, int]) -> ImageList:
    """An ImageList for torchvision's parts: only its shape and sizes are read, so it holds no pixels."""
    n = maps[0].shape[0]
    return ImageList(maps[0].new_empty((n, 0, *size)), [size] * n)


class _DenseHead(DetectionHead):
    """FCOS and RetinaNet: a shared per-level predictor over anchors, torchvision's loss and NMS."""

    anchors: _LevelAnchors

    def _setup(self, feature_info: FeatureInfo, min_stride: int, name: str) -> int:
        self.levels = detection_levels(feature_info, min_stride)
        channels = _shared_channels(feature_info, self.levels, name)
        coarsest = feature_info.reductions[self.levels[-1]]
        self.strides = [feature_info.reductions[i] for i in self.levels] + [2 * coarsest, 4 * coarsest]
        self.extra = LastLevelP6P7(channels, channels)
        return channels

    def _outputs(self, maps: list[Tensor], size: tuple[int, int]) -> tuple[dict, list[Tensor], list[int]]:
        outputs = self.detector.head(maps)
        anchors = self.anchors(_images(maps, size), maps)
        per_location = outputs["cls_logits"].shape[1] // sum(m.shape[-2] * m.shape[-1] for m in maps)
        return outputs, anchors, [m.shape[-2] * m.shape[-1] * per_location for m in maps]

    def detect(self, maps: list[Tensor], size: tuple[int, int]) -> Detections:
        outputs, anchors, counts = self._outputs(maps, size)
        split = {k: list(v.split(counts, dim=1)) for k, v in outputs.items()}
        per_level = [list(a.split(counts)) for a in anchors]
        return self.detector.postprocess_detections(split, per_level, [size] * len(anchors))
