"""The detection task: boxes and labels per image, the summed loss dict, COCO mAP, predictions in pixels.

Targets are a list with one ``{"boxes": [M, 4] xyxy pixels float, "labels": [M] int}`` per image (M may
be 0). Images come as one batch ``[N, 3, H, W]`` or a list of ``[3, H, W]`` of different sizes, which
`collate_fn` pads at the bottom and right (so no box moves). In training the model returns torchvision's
loss dict: the loss is its sum and each part goes to the history as ``train_loss_<part>``; in eval mode
it returns the detections, scored by COCO mAP (``val_map``, ``val_map_50``). There is no validation loss.

Examples:
    >>> task = DetectionTask()
    >>> task.default_monitor(has_val=True), task.has_val_loss
    ('val_map', False)
    >>> batch = [(torch.zeros(3, 32, 48), _empty()), (torch.zeros(3, 40, 32), _empty())]
    >>> images, targets = task.collate_fn(batch)  # padded at the bottom and right
    >>> images.shape, len(targets)
    (torch.Size([2, 3, 40, 48]), 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.detection import collate_detection, pad_images
from .base import TASKS, Meter, Task
from .detection_metrics import DetectionMeter

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["MAX_DETECTIONS", "SCORE_THRESHOLD", "DetectionTask"]

Target = dict[str, Tensor]
_EDGE = 0.01  # pixels a box may pass the image edge by (float rounding of resized boxes)
# What `DetectionTask.prediction` keeps by default (``model.predict``, ``transferkit predict``). The heads
# keep every detection from 0.05 (SSDlite: 0.001), as COCO mAP wants low-scoring boxes too; an answer for
# a person is the boxes worth drawing, the score from which the pictures draw them (`SHOW_SCORE`).
SCORE_THRESHOLD = 0.3
MAX_DETECTIONS = 100  # the heads' own detections_per_img: no cut unless asked for


def _empty() -> Target:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def _layout_error(targets: Any, where: str) -> ValueError:
    what = type(targets).__name__
    if isinstance(targets, (list, tuple)) and targets:
        what = f"a {what} of {type(targets[0]).__name__}"
    return ValueError(
        f"the targets at {where} are {what}; detection takes a list with one dict "
        "{'boxes': float [M, 4] xyxy pixels, 'labels': int [M]} per image. With a Dataset that returns "
        "(image, target dict), use DataLoader(dataset, collate_fn=get_task('detection').collate_fn)"
    )


def _check_image(target: Any, num_classes: int, where: str) -> None:
    """Raise ValueError naming ``where`` unless ``target`` is one image's valid boxes and labels."""
    if not isinstance(target, Mapping) or not {"boxes", "labels"} <= set(target):
        keys = sorted(map(str, target)) if isinstance(target, Mapping) else type(target).__name__
        raise ValueError(f"the target of {where} is {keys}; it needs the keys 'boxes' and 'labels'")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(
            f"the boxes and labels of {where} are {type(boxes).__name__} and {type(labels).__name__}; "
            "make them tensors: torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(labels)"
        )
    if not boxes.is_floating_point() or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"the boxes of {where} are {boxes.dtype} and its labels {labels.dtype}; boxes are float pixel "
            "coordinates and labels integer class indices"
        )
    if boxes.numel() == 0 and labels.numel() == 0:
        return  # an image without objects
    if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.ndim != 1 or len(labels) != len(boxes):
        raise ValueError(
            f"{where} has boxes {list(boxes.shape)} and labels {list(labels.shape)}; expected [M, 4] "
            "(x1, y1, x2, y2) and [M]"
        )
    if not boxes.isfinite().all():
        raise ValueError(
            f"{where} has a non-finite box coordinate: {boxes[~boxes.isfinite().all(1)][0].tolist()}"
        )
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"box {i} of {where} is {boxes[i].tolist()}: x2 <= x1 or y2 <= y1. Boxes are (x1, y1, x2, y2) "
            "with x2 > x1 and y2 > y1; convert (x, y, w, h) boxes with torchvision.ops.box_convert"
        )
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(
            f"label {int(labels[i])} of box {i} of {where} is outside [0, {num_classes}) for "
            f"num_classes={num_classes}; labels count real classes from 0 (no background class)"
        )


@TASKS.register("detection")
class DetectionTask(Task):
    """Boxes per image: targets a list of ``{"boxes", "labels"}``, outputs the loss dict or detections."""

    name = "detection"
    eval_center_crop = False  # the whole image is resized: no box is cut off
    has_val_loss = False
    cacheable = False
    export_post_processing = True  # boxes, scores, labels and a count, of fixed size
    collate_fn = staticmethod(collate_detection)

    def as_batch(self, inputs: Any) -> Any:
        """A list of images ``[3, H, W]`` (sizes may differ) as one padded batch; a batch as it is."""
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, Tensor) for x in inputs):
            return pad_images(inputs)
        return inputs

    def check_targets(self, targets: Any, num_classes: int, where: str) -> None:
        """Raise ValueError naming the image unless ``targets`` is a list of valid box dicts."""
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, Mapping) for t in targets):
            raise _layout_error(targets, where)
        for i, target in enumerate(targets):
            _check_image(target, num_classes, f"{where}, image {i}")

    def check_batch(self, inputs: Any, targets: Any, num_classes: int, where: str) -> None:
        """`check_targets`, one target per image, and every box inside the input images."""
        self.check_targets(targets, num_classes, where)
        if not isinstance(inputs, Tensor):
            return
        if len(targets) != len(inputs):
            raise ValueError(f"the batch at {where} has {len(inputs)} images but {len(targets)} targets")
        height, width = inputs.shape[-2:]
        for i, target in enumerate(targets):
            boxes = target["boxes"].reshape(-1, 4)
            low, high = boxes.new_tensor([-_EDGE] * 2), boxes.new_tensor([width + _EDGE, height + _EDGE])
            out = (boxes[:, :2] < low).any(1) | (boxes[:, 2:] > high).any(1)
            if out.any():
                j = int(out.nonzero()[0])
                raise ValueError(
                    f"box {j} of {where}, image {i} is {boxes[j].tolist()}, outside the {width}x{height} "
                    "image; boxes are (x1, y1, x2, y2) pixels of the input as the model sees it (after "
                    "resizing: transferkit.data.build_detection_transforms moves the boxes with the image)"
                )

    def to_device(self, targets: Sequence[Target], device: torch.device) -> list[Target]:
        """Each image's boxes (float32 ``[M, 4]``) and labels (int64) on ``device``."""
        return [
            {"boxes": t["boxes"].to(device, torch.float32, non_blocking=True).reshape(-1, 4),
             "labels": t["labels"].to(device, torch.int64, non_blocking=True)}
            for t in targets
        ]  # fmt: skip

    def forward(self, net: nn.Module, inputs: Tensor, targets: Any) -> Any:
        """The loss dict in training mode (the model needs the targets), detections in eval mode."""
        return net(inputs, targets) if net.training else net(inputs)

    def loss(self, outputs: Any, targets: Any) -> Tensor:
        """The sum of the model's loss dict."""
        if not isinstance(outputs, Mapping) or not outputs:
            raise TypeError(
                f"a detection model in training mode returns its loss dict, got {type(outputs).__name__}; "
                "call it as model(images, targets) in train mode"
            )
        return torch.stack([v.float() for v in outputs.values()]).sum()

    def loss_parts(self, outputs: Any) -> dict[str, Tensor]:
        """The loss dict's parts, named for the history (a leading ``loss_`` dropped)."""
        if not isinstance(outputs, Mapping):
            return {}
        return {k.removeprefix("loss_"): v.detach() for k, v in outputs.items()}

    def num_samples(self, targets: Sequence[Target]) -> int:
        return len(targets)

    def meter(self, num_classes: int, device: torch.device) -> Meter:
        return DetectionMeter(num_classes, device=device)

    def default_monitor(self, has_val: bool) -> str:
        return "val_map" if has_val else "train_loss"

    def default_bn(self, pretrained: Any) -> str:
        """``frozen_all`` for pretrained backbones, as torchvision's detectors freeze their BatchNorm."""
        return "frozen" if pretrained is False else "frozen_all"

    def float_outputs(self, outputs: Any, device: torch.device | None = None) -> list[Target]:
        """Detections with float boxes and scores (int64 labels), on ``device`` when given."""
        return [
            {"boxes": d["boxes"].float().to(device), "scores": d["scores"].float().to(device),
             "labels": d["labels"].long().to(device)}
            for d in outputs
        ]  # fmt: skip

    def collect(self, outputs: Sequence[list[Target]]) -> list[Target]:
        """One detection dict per image, in loader order."""
        return [image for batch in outputs for image in batch]

    csv_columns = ("score", "x1", "y1", "x2", "y2")

    def prediction_options(self, **options: Any) -> dict[str, Any]:
        """``score_threshold`` and ``max_detections`` for `prediction`, checked; None: the defaults,
        `SCORE_THRESHOLD` and `MAX_DETECTIONS`.

        Raises:
            ValueError: A threshold outside [0, 1], or a count below 1.
        """
        given = {name: value for name, value in options.items() if value is not None}
        threshold = given.pop("score_threshold", SCORE_THRESHOLD)
        count = given.pop("max_detections", MAX_DETECTIONS)
        if given:
            raise TypeError(
                f"detection predictions take score_threshold and max_detections, not {sorted(given)}"
            )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"score_threshold is a score in [0, 1], got {threshold!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"max_detections is an int >= 1, got {count!r}")
        return {"score_threshold": float(threshold), "max_detections": count}

    def prediction(
        self,
        output: Target,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
        *,
        score_threshold: float = SCORE_THRESHOLD,
        max_detections: int = MAX_DETECTIONS,
    ) -> Target:
        """``{"boxes", "scores", "labels"}`` with boxes in the image's own pixels (``size``: its ``(H, W)``).

        The ``max_detections`` best detections scoring ``score_threshold`` or more, best first (from those
        the head kept: its own ``score_thresh`` and ``detections_per_img`` come first); ``top_k`` does
        not apply.
        """
        boxes = output["boxes"].float()
        if input_size is not None and tuple(input_size) != tuple(size):
            scale = boxes.new_tensor([size[1] / input_size[1], size[0] / input_size[0]] * 2)
            boxes = (boxes * scale).clamp(min=0)
            boxes = torch.minimum(boxes, boxes.new_tensor([size[1], size[0]] * 2))
        order = output["scores"].argsort(descending=True)
        order = order[output["scores"][order] >= score_threshold][:max_detections]
        return {"boxes": boxes[order], "scores": output["scores"][order], "labels": output["labels"][order]}

    def rows(
        self,
        output: Target,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int],
        **options: Any,
    ) -> list[tuple[Any, ...]]:
        """``(class name, score, x1, y1, x2, y2)`` per box of `prediction`, best first, in image pixels."""
        answer = self.prediction(output, classes, top_k, size, input_size, **options)
        listed = zip(*(answer[k].tolist() for k in ("labels", "scores", "boxes")))
        return [(classes[label], score, *box) for label, score, box in listed]

    # --------------------------------------------------------------------------------- data folders
    def folder_loaders(self, root: Path, model: TransferModel | None, **kwargs: Any) -> dict[str, DataLoader]:
        from ..data.detection import detection_folder_loaders

        return detection_folder_loaders(root, model, **kwargs)

    def folder_dataset(
        self, split_dir: Path, model: TransferModel, classes: list[str], image_size: int | None
    ) -> Dataset:
        from ..data.detection import DetectionFolder, build_detection_transforms

        transform = build_detection_transforms(model.data_config, False, image_size)
        return DetectionFolder(split_dir, transform, classes=classes)

    def image_transform(
        self, model: TransferModel, image_size: int | None
    ) -> Callable[[Image.Image], Tensor]:
        from ..data.detection import build_detection_transforms

        pair = build_detection_transforms(model.data_config, False, image_size)
        return lambda image: pair(image, _empty())[0]  # no boxes: the target only fills the pair

    predict_picture = "predicted_boxes.png"
    default_neck = "fpn_lite"  # the heads share one predictor over levels of equal channels

    def describe(
        self,
        output: Any,
        classes: list[str],
        top_k: int,
        size: tuple[int, int],
        input_size: tuple[int, int],
        **options: Any,
    ) -> str:
        """``name score [x1, y1, x2, y2]`` per box of `prediction` (``options``: its threshold and count)."""
        rows = self.rows(output, classes, top_k, size, input_size, **options)
        kept = [f"{name} {score:.3f} [{', '.join(f'{v:.0f}' for v in box)}]" for name, score, *box in rows]
        threshold = options.get("score_threshold", SCORE_THRESHOLD)
        return "; ".join(kept) if kept else f"no box scoring {threshold:g} or more"
