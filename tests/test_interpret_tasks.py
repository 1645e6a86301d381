"""`transferkit.interpret` for segmentation and detection: per-image IoU and per-class IoU against hand
computations and torchmetrics, missed and false boxes against a hand count on a constructed case, AP
against torchmetrics on the same detections, the drawings, the dispatch by task and the progress bar."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from transferkit import TransferModel, build_model
from transferkit.interpret import (
    INTERPRETERS,
    ClassificationInterpretation,
    DetectionInterpretation,
    SegmentationInterpretation,
    interpret,
)
from transferkit.interpret.detection import match_counts
from transferkit.tasks import get_task

K, SIZE, IMAGES = 3, 32, 6
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def segmenter() -> TransferModel:
    torch.manual_seed(0)
    model = build_model("resnet18", head="fcn", num_classes=K, pretrained=False)
    model.classes = ["background", "circle", "square"]
    return model


@pytest.fixture(scope="module")
def seg_data(segmenter: TransferModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, the model's own predictions, and masks made from them with a different share of wrong
    pixels per image (and a 255 band), so that the images' IoUs differ."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(IMAGES, 3, SIZE, SIZE, generator=generator)
    segmenter.eval()
    with torch.no_grad():
        predicted = segmenter(images).argmax(1)
    masks = predicted.clone()
    for i in range(IMAGES):
        wrong = torch.rand(SIZE, SIZE, generator=generator) < i / IMAGES
        masks[i][wrong] = torch.randint(K, (int(wrong.sum()),), generator=generator)
    masks[:, :3] = 255  # an unlabelled band
    masks[2] = 255  # an image without a labelled pixel: no IoU
    return images, predicted, masks


def _hand_iou(predicted: torch.Tensor, mask: torch.Tensor) -> float:
    """The mean IoU of one image over the classes in its labelled truth or prediction, pixel by pixel."""
    pairs = [(int(p), int(t)) for p, t in zip(predicted.flatten(), mask.flatten(), strict=True) if t != 255]
    if not pairs:
        return math.nan
    ious = []
    for k in {c for pair in pairs for c in pair}:
        hits = sum(p == t == k for p, t in pairs)
        union = sum(p == k or t == k for p, t in pairs)
        ious.append(hits / union)
    return sum(ious) / len(ious)


@pytest.fixture(scope="module")
def seg_interp(
    segmenter: TransferModel, seg_data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> SegmentationInterpretation:
    images, _, masks = seg_data
    segmenter.train()
    found = interpret(segmenter, DataLoader(TensorDataset(images, masks), batch_size=4), device="cpu")
    assert segmenter.training, "interpret() must give the model back in the mode it had"
    assert isinstance(found, SegmentationInterpretation)
    return found


def test_per_image_iou_and_the_worst_images_match_a_hand_computation(
    seg_interp: SegmentationInterpretation, seg_data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    _, predicted, masks = seg_data
    expected = [_hand_iou(predicted[i], masks[i]) for i in range(IMAGES)]
    assert math.isnan(seg_interp.sample(2).iou) and math.isnan(expected[2])
    scored = [i for i in range(IMAGES) if i != 2]
    assert [seg_interp.sample(i).iou for i in scored] == pytest.approx([expected[i] for i in scored])
    assert len(set(round(expected[i], 6) for i in scored)) > 2, "the case must rank images apart"
    worst = seg_interp.worst(3)
    assert [s.index for s in worst] == sorted(scored, key=lambda i: expected[i])[:3]
    assert [s.iou for s in worst] == sorted(s.iou for s in worst)
    assert len(seg_interp.worst(100)) == IMAGES - 1  # the image without a labelled pixel has no IoU
    labelled = masks[0] != 255
    accuracy = float((predicted[0][labelled] == masks[0][labelled]).double().mean())
    assert seg_interp.sample(0).accuracy == pytest.approx(accuracy)
    with pytest.raises(ValueError, match="k must be >= 0"):
        seg_interp.worst(-1)


def test_per_class_iou_matches_torchmetrics_jaccard_index(
    seg_interp: SegmentationInterpretation, seg_data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    _, predicted, masks = seg_data
    jaccard = MulticlassJaccardIndex(K, average=None, ignore_index=255)(predicted, masks)
    rows = seg_interp.per_class_iou()
    assert [name for name, _ in rows] == ["background", "circle", "square"]
    assert [iou for _, iou in rows] == pytest.approx(jaccard.tolist())
    assert seg_interp.miou() == pytest.approx(float(jaccard.mean()))


def test_show_worst_draws_the_worst_images_again_from_the_dataset(
    seg_interp: SegmentationInterpretation, tmp_path: Path
) -> None:
    worst = seg_interp.worst(2)
    fig = seg_interp.show_worst(2, tmp_path / "worst.png")
    assert (tmp_path / "worst.png").read_bytes().startswith(PNG)
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[0] == f"#{worst[0].index} true, IoU {worst[0].iou:.2f}"
    assert titles[3].startswith(f"#{worst[1].index} predicted")


def test_drawing_needs_a_loader_in_dataset_order(
    segmenter: TransferModel, seg_data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> None:
    images, _, masks = seg_data
    shuffled = DataLoader(TensorDataset(images, masks), batch_size=4, shuffle=True)
    found = interpret(segmenter, shuffled, device="cpu", progress=False)
    with pytest.raises(ValueError, match="in order"):
        found.show_worst(2)


def test_masks_that_are_not_class_indices_are_refused(segmenter: TransferModel) -> None:
    images = torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="class index masks"):
        interpret(segmenter, [(images, torch.zeros(2, SIZE, SIZE))], device="cpu")
    with pytest.raises(ValueError, match="outside"):
        interpret(segmenter, [(images, torch.full((2, SIZE, SIZE), 7))], device="cpu")


# --------------------------------------------------------------------------------------------- detection
def _boxes(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# Per image: the truth, the detections, and the (missed, false) a person counts at score 0.3, IoU 0.5.
CASES = [
    (  # one found; a box on the class-1 object labelled 0 (false, and that object missed); a low score
        {"boxes": _boxes([2, 2, 20, 20], [30, 30, 50, 50]), "labels": torch.tensor([0, 1])},
        {"boxes": _boxes([2, 2, 20, 21], [30, 30, 50, 50], [30, 30, 50, 50]),
         "scores": torch.tensor([0.9, 0.8, 0.1]), "labels": torch.tensor([0, 0, 1])},
        (1, 1),
    ),
    (  # two detections of one object: the second is false
        {"boxes": _boxes([10, 10, 40, 40]), "labels": torch.tensor([2])},
        {"boxes": _boxes([10, 10, 40, 40], [11, 11, 41, 41]), "scores": torch.tensor([0.6, 0.95]),
         "labels": torch.tensor([2, 2])},
        (0, 1),
    ),
    (  # nothing to find, one detection
        {"boxes": _boxes(), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": _boxes([0, 0, 8, 8]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])},
        (0, 1),
    ),
    (  # greedy by score: the best detection takes the object it overlaps most (B, IoU 0.9; A: 0.74), so
        # the second one (A: 0.38, B: 0.6) is false and A missed, where a best pairing would miss none
        {"boxes": _boxes([0, 0, 20, 20], [4, 0, 24, 20]), "labels": torch.tensor([0, 0])},
        {"boxes": _boxes([3, 0, 23, 20], [9, 0, 29, 20]), "scores": torch.tensor([0.9, 0.8]),
         "labels": torch.tensor([0, 0])},
        (1, 1),
    ),
    (  # two objects, no detection: both missed
        {"boxes": _boxes([0, 0, 10, 10], [20, 20, 30, 30]), "labels": torch.tensor([1, 2])},
        {"boxes": _boxes(), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
        (2, 0),
    ),
]  # fmt: skip


class _Images(Dataset):
    """Image ``i`` is filled with ``i`` (so the stub detector knows it), with the truth of `CASES`."""

    def __len__(self) -> int:
        return len(CASES)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.full((3, 64, 64), float(index)), CASES[index][0]


@pytest.fixture(scope="module")
def detector() -> TransferModel:
    """A real detection model whose eval-mode answers are the detections of `CASES`."""
    torch.manual_seed(0)
    model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=K, pretrained=False)
    model.classes = ["circle", "square", "triangle"]

    def answers(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [CASES[int(image[0, 0, 0].round())][1] for image in images]

    model.forward = answers  # type: ignore[method-assign]
    return model


@pytest.fixture(scope="module")
def det_interp(detector: TransferModel) -> DetectionInterpretation:
    loader = DataLoader(_Images(), batch_size=2, collate_fn=get_task("detection").collate_fn)
    found = interpret(detector, loader, device="cpu")
    assert isinstance(found, DetectionInterpretation)
    return found


def test_missed_and_false_boxes_match_a_hand_count(det_interp: DetectionInterpretation) -> None:
    assert [(det_interp.sample(i).missed, det_interp.sample(i).false) for i in range(len(CASES))] == [
        expected for _, _, expected in CASES
    ]
    for index, (truth, predicted, expected) in enumerate(CASES):
        assert match_counts(predicted, truth) == expected, index
        row = det_interp.sample(index)
        assert row.true_boxes == len(truth["labels"])
        assert row.predicted_boxes == int((predicted["scores"] >= 0.3).sum())
    assert [(s.index, s.missed) for s in det_interp.most_missed(10)] == [(4, 2), (0, 1), (3, 1)]
    assert [s.index for s in det_interp.most_false(2)] == [0, 1]  # ties in loader order
    assert match_counts(CASES[0][1], CASES[0][0], score_threshold=0.05) == (0, 1)  # the low score counts


def test_per_class_ap_matches_torchmetrics_on_the_same_detections(
    det_interp: DetectionInterpretation,
) -> None:
    preds, truth = [c[1] for c in CASES], [c[0] for c in CASES]
    coco = MeanAveragePrecision(class_metrics=True, backend="faster_coco_eval")(preds, truth)
    at_50 = MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True, backend="faster_coco_eval")
    at_50 = at_50(preds, truth)
    assert det_interp.map == pytest.approx(float(coco["map"]))
    assert det_interp.map_50 == pytest.approx(float(coco["map_50"]))
    rows = det_interp.per_class_ap()
    assert [r.name for r in rows] == ["circle", "square", "triangle"]
    assert [r.true_boxes for r in rows] == [3, 2, 2]
    assert [r.ap for r in rows] == pytest.approx(coco["map_per_class"].tolist())
    assert [r.ap_50 for r in rows] == pytest.approx(at_50["map_per_class"].tolist())


def test_show_draws_the_chosen_images(det_interp: DetectionInterpretation, tmp_path: Path) -> None:
    fig = det_interp.show(det_interp.most_missed(2), tmp_path / "missed.png")
    assert (tmp_path / "missed.png").read_bytes().startswith(PNG)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["#4: 2 missed, 0 false", "#0: 1 missed, 1 false"]
    det_interp.show([3], tmp_path / "one.png")  # an index works too
    with pytest.raises(ValueError, match="outside"):
        det_interp.show([len(CASES)])


# ------------------------------------------------------------------------------------- dispatch, progress
def test_each_task_gets_its_interpretation_and_other_tasks_are_refused(
    segmenter: TransferModel, detector: TransferModel
) -> None:
    assert set(INTERPRETERS) == {"classification", "segmentation", "detection"}
    classifier = build_model("resnet18", num_classes=2, pretrained=False)
    batch = (torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1]))
    assert isinstance(interpret(classifier, [batch], device="cpu"), ClassificationInterpretation)
    stranger = SimpleNamespace(task="keypoints")
    with pytest.raises(ValueError, match="supports classification, segmentation, detection.*'keypoints'"):
        interpret(stranger, [batch])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score_threshold is in"):
        interpret(detector, [], score_threshold=2.0)
    with pytest.raises(ValueError, match="empty loader"):
        interpret(segmenter, [], device="cpu")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_a_bar_over_the_batches_and_false_silences_it(
    segmenter: TransferModel,
    seg_data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images, _, masks = seg_data
    loader = DataLoader(TensorDataset(images, masks), batch_size=3)
    for shown in (True, False):
        screen = _Terminal()
        monkeypatch.setattr(sys, "stderr", screen)
        interpret(segmenter, loader, device="cpu", progress=shown)
        text = screen.getvalue()
        assert ("interpret: " in text and "/2 [" in text) == shown, text
