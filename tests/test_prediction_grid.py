"""A run folder's predictions.png (``transferkit train`` and ``demo``) shows the model's mistakes first."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from transferkit import build_model
from transferkit.cli.runs import _grid_samples
from transferkit.tasks import get_task


def test_the_grid_takes_the_mistakes_first_then_spreads_the_rest() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, pretrained=False).eval()
    images = torch.randn(40, 3, 32, 32)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = predicted.clone()
    mistakes = [7, 23, 31]  # where the labels disagree with what the model says
    labels[mistakes] = (predicted[mistakes] + 1) % 3
    grid = _grid_samples(model, TensorDataset(images, labels), 16)
    chosen = list(grid.dataset.indices)
    assert chosen[:3] == mistakes
    assert chosen[3:] == [i for i in range(0, 40, 2) if i not in mistakes][:13]  # spread over the classes
    inputs, targets = next(iter(grid))
    assert inputs.shape == (16, 3, 32, 32) and targets[:3].tolist() == labels[mistakes].tolist()


def test_without_mistakes_the_grid_is_spread_evenly() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, pretrained=False).eval()
    images = torch.randn(20, 3, 32, 32)
    with torch.no_grad():
        labels = model(images).argmax(1)
    grid = _grid_samples(model, TensorDataset(images, labels), 5)
    assert list(grid.dataset.indices) == [0, 4, 8, 12, 16]


def test_task_errors_rank_samples() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert get_task("classification").errors(logits, torch.tensor([0, 0, 1])).tolist() == [0.0, 1.0, 1.0]
    masks = torch.tensor([[[0, 1], [255, 1]], [[0, 0], [0, 0]]])
    outputs = torch.zeros(2, 2, 2, 2)
    outputs[:, 1] = 1.0  # predicts class 1 everywhere
    errors = get_task("segmentation").errors(outputs, masks).tolist()
    assert errors == pytest.approx(
        [1 / 3, 1.0]
    )  # one of three labelled pixels wrong (255 ignored); all four wrong
    assert get_task("detection").errors([], []) is None
