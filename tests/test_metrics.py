from __future__ import annotations

import doctest
import math

import pytest
import torch

import transferkit.tasks.metrics
from transferkit.tasks.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    accuracy,
    confusion_matrix,
    iou_from_confusion,
    miou_from_confusion,
)

# A 3-class 2x2 mask.        truth        prediction
#                            [[0, 1],     [[0, 2],
#                             [2, 2]]      [2, 1]]
# confusion (rows truth): [0,0]=1, [1,2]=1, [2,2]=1, [2,1]=1
# IoU_0 = 1/1, IoU_1 = 0/(1+1-0) = 0, IoU_2 = 1/(2+2-1) = 1/3 -> mIoU 4/9; pixel acc 2/4
TRUTH = torch.tensor([[[0, 1], [2, 2]]])
PRED = torch.tensor([[[0, 2], [2, 1]]])


def one_hot_logits(preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits [N, K, H, W] whose argmax is ``preds`` [N, H, W]."""
    return torch.nn.functional.one_hot(preds, num_classes).permute(0, 3, 1, 2).float()


def test_doctests_hold():
    assert doctest.testmod(transferkit.tasks.metrics).failed == 0


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TRUTH, num_classes=3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_iou_and_miou_by_hand():
    cm = confusion_matrix(PRED, TRUTH, num_classes=3)
    assert iou_from_confusion(cm).tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    assert miou_from_confusion(cm) == pytest.approx(4 / 9)


def test_miou_skips_classes_absent_from_truth_and_prediction():
    cm = confusion_matrix(PRED, TRUTH, num_classes=5)
    iou = iou_from_confusion(cm)
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert miou_from_confusion(cm) == pytest.approx(4 / 9)


def test_miou_counts_a_class_that_is_only_predicted_as_zero():
    # truth all 0, one pixel predicted 1: IoU_0 = 3/4, IoU_1 = 0 (predicted, never true) -> 3/8
    cm = confusion_matrix(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]), num_classes=2)
    assert miou_from_confusion(cm) == pytest.approx(3 / 8)


def test_segmentation_meter_by_hand_from_logits_and_from_predictions():
    from_logits = SegmentationMeter(num_classes=3)
    from_logits.update(one_hot_logits(PRED, 3), TRUTH)
    from_preds = SegmentationMeter(num_classes=3)
    from_preds.update(PRED, TRUTH)
    for meter in (from_logits, from_preds):
        assert meter.compute() == pytest.approx({"miou": 4 / 9, "acc": 0.5})


def test_segmentation_meter_honours_ignore_index():
    # ignore the truth-1 pixel: confusion [0,0]=1, [2,2]=1, [2,1]=1
    # IoU_0 = 1, IoU_1 = 0/(0+1-0) = 0, IoU_2 = 1/(2+1-1) = 1/2 -> mIoU 1/2; acc 2/3
    truth = torch.tensor([[[0, 255], [2, 2]]])
    meter = SegmentationMeter(num_classes=3)
    meter.update(PRED, truth)
    assert meter.confmat.sum().item() == 3
    assert meter.compute() == pytest.approx({"miou": 0.5, "acc": 2 / 3})


def test_custom_ignore_index():
    truth = torch.tensor([[[0, -1], [2, 2]]])
    meter = SegmentationMeter(num_classes=3, ignore_index=-1)
    meter.update(PRED, truth)
    assert meter.compute() == pytest.approx({"miou": 0.5, "acc": 2 / 3})


def test_segmentation_meter_two_batches_equal_one_big_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 8, 8, generator=gen)
    masks = torch.randint(0, 4, (6, 8, 8), generator=gen)
    masks[0, :2] = 255
    split, whole = SegmentationMeter(4), SegmentationMeter(4)
    split.update(logits[:2], masks[:2])
    split.update(logits[2:], masks[2:])
    whole.update(logits, masks)
    assert torch.equal(split.confmat, whole.confmat)
    assert split.compute() == whole.compute()


def test_segmentation_confmat_is_this_process_s_share():
    # Each process's own matrix adds up to the whole; compute() sums them itself (tests/test_metrics_ddp.py).
    gen = torch.Generator().manual_seed(1)
    logits, masks = torch.randn(4, 3, 5, 5, generator=gen), torch.randint(0, 3, (4, 5, 5), generator=gen)
    rank0, rank1, whole = SegmentationMeter(3), SegmentationMeter(3), SegmentationMeter(3)
    rank0.update(logits[:1], masks[:1])
    rank1.update(logits[1:], masks[1:])
    whole.update(logits, masks)
    assert torch.equal(rank0.confmat + rank1.confmat, whole.confmat)
    assert rank0.state == rank1.state == ()  # nothing for the Trainer to sum


def test_compute_then_more_batches_keeps_counting():
    gen = torch.Generator().manual_seed(2)
    logits, masks = torch.randn(4, 3, 5, 5, generator=gen), torch.randint(0, 3, (4, 5, 5), generator=gen)
    meter, whole = SegmentationMeter(3), SegmentationMeter(3)
    meter.update(logits[:2], masks[:2])
    first = meter.compute()
    meter.update(logits[2:], masks[2:])
    whole.update(logits, masks)
    assert meter.compute() == whole.compute() != first


def test_segmentation_meter_reset_and_empty_compute():
    meter = SegmentationMeter(3)
    meter.update(PRED, TRUTH)
    meter.reset()
    with pytest.raises(ValueError, match="no pixels"):
        meter.compute()


@pytest.mark.parametrize(
    ("outputs", "targets", "shapes"),
    [
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 5, dtype=torch.long), r"\(2, 3, 4, 4\).*\(2, 5, 5\)"),
        (torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), r"\(2, 4, 4, 4\)"),
        (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), r"\(2, 4\)"),
    ],
)
def test_segmentation_meter_shape_errors_name_the_shapes(outputs, targets, shapes):
    with pytest.raises(ValueError, match=shapes):
        SegmentationMeter(3).update(outputs, targets)


def test_confusion_matrix_rejects_out_of_range_and_float_inputs():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), num_classes=3)
    with pytest.raises(ValueError, match="preds"):
        confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), num_classes=3)
    with pytest.raises(TypeError, match="float32"):
        confusion_matrix(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), num_classes=3)


def test_miou_of_an_empty_matrix_raises():
    with pytest.raises(ValueError, match="empty"):
        miou_from_confusion(torch.zeros(3, 3, dtype=torch.long))


# 3 samples, 6 classes; the target sits at rank 1, rank 3 and rank 6 of its row.
LOGITS6 = torch.tensor(
    [
        [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 0: rank 1
        [0.0, 1.0, 9.0, 8.0, 5.0, 2.0],  # target 4: rank 3
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 0: rank 6
    ]
)
TARGETS6 = torch.tensor([0, 4, 0])


def test_accuracy_by_hand():
    assert accuracy(LOGITS6, TARGETS6, topk=(1, 3, 5, 6)) == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    assert accuracy(LOGITS6, TARGETS6) == pytest.approx([1 / 3])


def test_accuracy_rejects_k_beyond_classes_and_bad_shapes():
    with pytest.raises(ValueError, match="k=7"):
        accuracy(LOGITS6, TARGETS6, topk=(7,))
    with pytest.raises(ValueError, match=r"\(3, 6\).*\(2,\)"):
        accuracy(LOGITS6, TARGETS6[:2])
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_classification_meter_reports_top5_only_above_five_classes():
    six = ClassificationMeter()
    six.update(LOGITS6, TARGETS6)
    assert six.compute() == pytest.approx({"acc": 1 / 3, "top5": 2 / 3})
    five = ClassificationMeter()
    five.update(LOGITS6[:, :5], torch.tensor([0, 4, 0]))
    assert set(five.compute()) == {"acc"}


def test_classification_meter_two_batches_equal_one_big_batch():
    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(10, 7, generator=gen), torch.randint(0, 7, (10,), generator=gen)
    split, whole = ClassificationMeter(), ClassificationMeter()
    split.update(logits[:3], targets[:3])
    split.update(logits[3:], targets[3:])
    whole.update(logits, targets)
    assert torch.equal(split.counts, whole.counts)
    expected = accuracy(logits, targets, topk=(1, 5))
    assert split.compute() == pytest.approx({"acc": expected[0], "top5": expected[1]})


def test_classification_counts_are_this_process_s_share():
    busy, idle = ClassificationMeter(num_classes=6), ClassificationMeter(num_classes=6)
    busy.update(LOGITS6, TARGETS6)
    assert busy.counts.tolist() == [1, 2, 3]
    assert idle.counts.tolist() == [0, 0, 0]
    assert busy.state == ()  # nothing for the Trainer to sum: compute() syncs (tests/test_metrics_ddp.py)
    with pytest.raises(ValueError, match="no samples"):
        idle.compute()


def test_classification_meter_errors():
    meter = ClassificationMeter()
    with pytest.raises(ValueError, match="no samples"):
        meter.compute()
    with pytest.raises(ValueError, match=r"\(3, 6\).*\(3, 1\)"):
        meter.update(LOGITS6, TARGETS6[:, None])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        meter.update(LOGITS6, torch.tensor([0, 6, 1]))
    with pytest.raises(TypeError, match="integer"):
        meter.update(LOGITS6, TARGETS6.float())
    meter.update(LOGITS6, TARGETS6)
    with pytest.raises(ValueError, match="6"):
        meter.update(LOGITS6[:, :4], torch.tensor([0, 1, 2]))


def test_classification_meter_reset_keeps_num_classes():
    meter = ClassificationMeter()
    meter.update(LOGITS6, TARGETS6)
    meter.reset()
    assert meter.counts.tolist() == [0, 0, 0]
    meter.update(LOGITS6[:1], TARGETS6[:1])
    assert meter.compute() == {"acc": 1.0, "top5": 1.0}
