"""Confusion matrix and per-class IoU: the counts behind the pictures, and the pictures themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.viz.metric_plots import count_confusion, plot_class_iou, plot_confusion_matrix


class Fixed(nn.Module):
    """Predicts the class stored in the input's first value: a model whose confusions are known."""

    def __init__(self, num_classes: int, segmentation: bool = False) -> None:
        super().__init__()
        self.num_classes, self.segmentation = num_classes, segmentation
        self.config = {"classes": [f"c{i}" for i in range(num_classes)]}
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x[:, 0].long() if self.segmentation else x[:, 0, 0, 0].long()
        return nn.functional.one_hot(index, self.num_classes).movedim(-1, 1).float() * self.scale


def test_confusion_counts_images_and_pixels() -> None:
    preds, truth = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    x = preds.float().view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    cm = count_confusion(Fixed(3), DataLoader(TensorDataset(x, truth), batch_size=4))
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    masks = torch.tensor([[[0, 1], [255, 1]]])  # one ignored pixel
    image = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]).unsqueeze(1).expand(-1, 3, -1, -1)
    cm = count_confusion(Fixed(2, segmentation=True), DataLoader(TensorDataset(image, masks)))
    assert cm.tolist() == [[1, 0], [1, 1]]  # 3 labelled pixels: the last class-1 one predicted 0


def test_plots_write_pngs_with_names_and_totals(tmp_path: Path) -> None:
    x = torch.tensor([0, 1, 1, 2]).float().view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1, 2, 2])), batch_size=2)
    fig = plot_confusion_matrix(Fixed(3), loader, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert fig.axes[0].get_title() == "confusion matrix: 3 of 4 right (75.0%)"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["c0", "c1", "c2"]
    fig = plot_class_iou(Fixed(3), loader, tmp_path / "iou.png")
    assert (tmp_path / "iou.png").stat().st_size > 0
    assert "mIoU 0.667" in fig.axes[0].get_legend().get_texts()[0].get_text()


def test_soft_targets_are_refused() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(2, 3, 4, 4), torch.full((2, 3), 1 / 3)))
    with pytest.raises(ValueError, match="class indices"):
        count_confusion(Fixed(3), loader)
