"""The YOLO head's own parts: task-aligned assignment, the distribution focal loss, plain distances, the
batched post-processing (no image's boxes suppress another's), and its argument checks."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms, box_iou

from transferkit import FeatureInfo
from transferkit.models.heads.detection import YOLOHead
from transferkit.models.heads.detection.yolo_loss import _dfl, assign, cell_points, decode, pad_targets

INFO = FeatureInfo((32, 64), (8, 16))


def _maps(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, 32, 8, 8, generator=generator),
        torch.randn(batch, 64, 4, 4, generator=generator),
    ]


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {  # the large box first: where the two overlap, the predictions fit the small one better
            "boxes": torch.tensor([[20.0, 16.0, 60.0, 60.0], [2.0, 2.0, 30.0, 26.0]]),
            "labels": torch.tensor([0, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def test_assignment_takes_points_inside_each_box_and_resolves_overlaps_by_iou() -> None:
    points, _ = cell_points([(8, 8), (4, 4)], [8, 16], torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(2, len(points), 3, generator=generator)
    boxes = decode(points, torch.rand(2, len(points), 4, generator=generator) * 24 + 2)
    gt_boxes, gt_labels, gt_valid = pad_targets(_targets(), torch.device("cpu"))
    target_boxes, soft, foreground = assign(scores, boxes, points, gt_boxes, gt_labels, gt_valid, topk=13)
    assert not foreground[1].any() and not soft[1].any()  # the image without boxes has no target
    fg = foreground[0]
    assert 13 < int(fg.sum()) <= 26  # at most topk points per box, and both boxes got points
    inside = (points[fg] > target_boxes[0, fg, :2]).all(1) & (points[fg] < target_boxes[0, fg, 2:]).all(1)
    assert inside.all()
    # with every inside point taken, a point inside both boxes goes to the box its prediction overlaps more
    every, _, both = assign(scores, boxes, points, gt_boxes, gt_labels, gt_valid, topk=len(points))
    within = (points > gt_boxes[0, :, None, :2]).all(-1) & (points < gt_boxes[0, :, None, 2:]).all(-1)
    shared = within.all(0).nonzero().flatten()
    assert len(shared) == 2 and torch.equal(both[0], within.any(0))
    for index in shared.tolist():
        ious = box_iou(boxes[0, index : index + 1], gt_boxes[0])[0]
        assert ious[1] > ious[0] and torch.equal(every[0, index], gt_boxes[0, 1])
    # soft targets: only the box's own class, the best point of each box scored with its IoU
    labels = soft[0, fg].argmax(1)
    assert torch.equal(soft[0, fg].count_nonzero(1), torch.ones(int(fg.sum()), dtype=torch.int64))
    for box, label in zip(gt_boxes[0], gt_labels[0]):
        mine = fg & (target_boxes[0] == box).all(1)
        assert (labels[(target_boxes[0, fg] == box).all(1)] == label).all()
        best_iou = box_iou(boxes[0, mine], box[None]).max()
        assert soft[0, mine, label].max() == pytest.approx(float(best_iou), rel=1e-4)


def test_dfl_alone_moves_a_distance_to_its_target() -> None:
    logits = torch.zeros(1, 4, 16, requires_grad=True)
    target = torch.tensor([[0.0, 2.5, 7.25, 14.9]])
    optimizer = torch.optim.SGD([logits], lr=5.0)
    for _ in range(200):
        optimizer.zero_grad()
        _dfl(logits, target).sum().backward()
        optimizer.step()
    expected = (logits.softmax(-1) @ torch.arange(16.0)).detach()
    assert torch.allclose(expected, target, atol=0.1), expected  # from 7.5 each (uniform)


@pytest.mark.parametrize("reg_max", [16, 1])
def test_losses_are_finite_and_reg_max_1_predicts_plain_distances(reg_max: int) -> None:
    head = YOLOHead(INFO, num_classes=3, reg_max=reg_max)
    losses = head(_maps(), (64, 64), _targets())
    assert set(losses) == (
        {"classification", "box_iou", "box_dfl"} if reg_max > 1 else {"classification", "box_iou"}
    )
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())
    # untrained, every side starts about 1.5 strides out: boxes of their level's scale
    _, _, distances, _, strides = head._predict(_maps())
    assert torch.allclose(distances.mean(), torch.tensor(1.5), atol=0.2)


def test_batched_post_processing_equals_each_image_alone_and_per_image_nms() -> None:
    torch.manual_seed(0)
    head = YOLOHead(INFO, num_classes=3, score_thresh=0.001, nms_thresh=0.5, detections_per_img=20).eval()
    maps = _maps(batch=3)
    with torch.no_grad():
        together = head.detect(maps, (64, 64))
        alone = [head.detect([m[i : i + 1] for m in maps], (64, 64))[0] for i in range(3)]
        class_logits, _, distances, points, strides = head._predict(maps)
    for i, (a, b) in enumerate(zip(together, alone)):
        assert len(a["boxes"]) == 20  # enough candidates survive: the cut at detections_per_img applies
        assert torch.equal(a["labels"], b["labels"])  # the convolutions round differently in a batch
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.allclose(a["scores"], b["scores"])
        # the reference: every (point, class) of at least the threshold, torchvision's class-wise NMS
        scores = class_logits[i].sigmoid()
        boxes = decode(points, distances[i] * strides[:, None]).clamp(0, 64)
        point, label = (scores >= 0.001).nonzero(as_tuple=True)
        keep = batched_nms(boxes[point], scores[point, label], label, 0.5)[:20]
        assert torch.allclose(a["boxes"], boxes[point][keep], atol=1e-5)
        assert torch.equal(a["labels"], label[keep]) and torch.allclose(
            a["scores"], scores[point, label][keep]
        )
    fixed = head.detect_fixed(maps, (64, 64))  # the fixed-size form an exported file gives
    assert [t.shape for t in fixed] == [(3, 20, 4), (3, 20), (3, 20), (3,)] and fixed[3].tolist() == [20] * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width as an int >= 1, got 0"),
        ({"reg_max": 2.5}, "reg_max as an int >= 1, got 2.5"),
        ({"prior": 1.0}, r"prior as a probability in \(0, 1\), got 1.0"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        YOLOHead(INFO, num_classes=2, **kwargs)
