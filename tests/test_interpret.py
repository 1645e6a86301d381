"""`transferkit.interpret`: top losses, confusion, per-class scores, calibration and errors of a classifier,
each checked against a hand computation on the full logits of a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchmetrics.classification import MulticlassCalibrationError

from transferkit import TransferModel, build_model
from transferkit.data import ClassFolder, build_transforms, make_shapes_folder
from transferkit.interpret import ClassificationInterpretation, interpret

NUM_CLASSES, SAMPLES, SIZE = 3, 30, 32


@pytest.fixture(scope="module")
def model() -> TransferModel:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=NUM_CLASSES, pretrained=False)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(SAMPLES, 3, SIZE, SIZE, generator=generator)
    return images, torch.randint(NUM_CLASSES, (SAMPLES,), generator=generator)


@pytest.fixture(scope="module")
def logits(model: TransferModel, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Every logit at once: what `interpret` must agree with while never holding them."""
    model.eval()
    with torch.no_grad():
        return model(data[0]).float()


@pytest.fixture(scope="module")
def interp(model: TransferModel, data: tuple[torch.Tensor, torch.Tensor]) -> ClassificationInterpretation:
    model.train()
    loader = DataLoader(TensorDataset(*data), batch_size=8)  # 4 batches, the last one short
    result = interpret(model, loader, device="cpu")
    assert model.training, "interpret() must give the model back in the mode it had"
    return result


def test_top_losses_are_the_highest_cross_entropies_in_order(
    interp: ClassificationInterpretation, logits: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    targets = data[1]
    losses = F.cross_entropy(logits, targets, reduction="none")
    expected = torch.sort(losses, descending=True, stable=True).indices[:5].tolist()
    top = interp.top_losses(5)
    assert [s.index for s in top] == expected
    torch.testing.assert_close(torch.tensor([s.loss for s in top]), losses[expected], atol=1e-4, rtol=1e-4)
    assert [s.true for s in top] == [interp.classes[int(targets[i])] for i in expected]
    assert [s.predicted for s in top] == [interp.classes[int(logits[i].argmax())] for i in expected]
    assert all(s.path is None for s in top)  # a TensorDataset has no files
    assert len(interp.top_losses(100)) == SAMPLES


def test_most_confused_reads_the_off_diagonal_of_the_confusion_matrix(
    interp: ClassificationInterpretation, logits: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    expected = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for true, predicted in zip(data[1].tolist(), logits.argmax(1).tolist(), strict=True):
        expected[true, predicted] += 1
    cm = interp.confusion_matrix()
    assert torch.equal(cm, expected)
    pairs = interp.most_confused()
    names = interp.classes
    off = {
        (names[t], names[p]): int(cm[t, p]) for t in range(NUM_CLASSES) for p in range(NUM_CLASSES) if t != p
    }
    assert {(t, p): c for t, p, c in pairs} == {k: v for k, v in off.items() if v >= 1}
    assert [c for _, _, c in pairs] == sorted((c for _, _, c in pairs), reverse=True)
    assert all(c >= 3 for _, _, c in interp.most_confused(min_count=3))


def test_calibration_error_matches_torchmetrics_on_all_logits(
    interp: ClassificationInterpretation, logits: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    metric = MulticlassCalibrationError(num_classes=NUM_CLASSES, n_bins=10, norm="l1")
    expected = float(metric(logits.softmax(1), data[1]))
    ece, bins = interp.calibration(n_bins=10)
    assert ece == pytest.approx(expected, abs=1e-5)
    assert len(bins) == 10 and sum(b.count for b in bins) == SAMPLES
    correct = int((logits.argmax(1) == data[1]).sum())
    assert sum(b.accuracy * b.count for b in bins) == pytest.approx(correct)
    assert ece == pytest.approx(
        sum(abs(b.accuracy - b.confidence) * b.count for b in bins) / SAMPLES, abs=1e-5
    )


def test_per_class_metrics_match_a_hand_count(
    interp: ClassificationInterpretation, logits: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    predicted, targets = logits.argmax(1).tolist(), data[1].tolist()
    for k, row in enumerate(interp.per_class()):
        hits = sum(p == t == k for p, t in zip(predicted, targets, strict=True))
        said, real = predicted.count(k), targets.count(k)
        precision = hits / said if said else 0.0
        recall = hits / real if real else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        assert (row.name, row.support) == (interp.classes[k], real)
        assert (row.precision, row.recall, row.f1) == pytest.approx((precision, recall, f1))


def test_errors_are_exactly_the_misclassified_samples(
    interp: ClassificationInterpretation, logits: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    probabilities, predicted = logits.softmax(1).max(1)
    wrong = (predicted != data[1]).nonzero().flatten().tolist()
    errors = interp.errors()
    assert wrong and [e.index for e in errors] == wrong
    assert [e.probability for e in errors] == pytest.approx(probabilities[wrong].tolist(), abs=1e-5)
    assert all(e.true != e.predicted for e in errors)


def test_a_folder_loader_gives_each_sample_its_path(model: TransferModel, tmp_path: Path) -> None:
    root = make_shapes_folder(tmp_path, num_classes=NUM_CLASSES, per_class={"val": 3}, image_size=SIZE)
    dataset = ClassFolder(root / "val", build_transforms(model.data_config, False, SIZE))
    found = interpret(model, DataLoader(dataset, batch_size=4), device="cpu")
    assert [s.path for s in found.top_losses(100)] == [
        str(dataset.samples[s.index][0]) for s in found.top_losses(100)
    ]
    subset = interpret(model, DataLoader(Subset(dataset, [5, 1, 2]), batch_size=2), device="cpu")
    assert [subset.sample(i).path for i in range(3)] == [str(dataset.samples[i][0]) for i in (5, 1, 2)]
    shuffled = interpret(model, DataLoader(dataset, batch_size=4, shuffle=True), device="cpu")
    assert shuffled.paths is None  # the order is not the dataset's: no path rather than a wrong one


def test_masks_for_a_classifier_and_empty_loaders_are_refused(model: TransferModel) -> None:
    with pytest.raises(ValueError, match=r"shape \[2, 32, 32\]; classification takes class indices"):
        interpret(model, [(torch.randn(2, 3, SIZE, SIZE), torch.zeros(2, SIZE, SIZE, dtype=torch.long))])
    with pytest.raises(ValueError, match="not class indices"):
        interpret(model, [(torch.randn(2, 3, SIZE, SIZE), torch.zeros(2, NUM_CLASSES))])
    with pytest.raises(ValueError, match="empty loader"):
        interpret(model, [], device="cpu")
