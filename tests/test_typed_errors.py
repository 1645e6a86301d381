"""Inputs that lack what the typed code reads get a clear error that says what is missing, not an
AttributeError or a TypeError from deep inside: a backbone without blocks, a model without
num_classes, a freeze state built without its policy's arguments, a VOC box without a coordinate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit import FeatureInfo, TransferModel
from transferkit.data import DetectionFolder
from transferkit.models.freeze import FreezeState
from transferkit.viz.metric_plots import count_confusion


class _NoBlocks(nn.Module):
    """Has feature_info but no ``blocks``: TransferModel needs both (build_model adds blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.feature_info = FeatureInfo(channels=(4,), reductions=(1,))


def test_transfer_model_names_a_backbone_without_blocks() -> None:
    with pytest.raises(TypeError, match=r"backbone _NoBlocks has no blocks dict .*build_model"):
        TransferModel(_NoBlocks(), nn.Identity(), nn.Identity(), {})


def test_count_confusion_names_a_model_without_num_classes() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(TypeError, match="Linear has no num_classes; pass a TransferModel"):
        count_confusion(nn.Linear(3, 2), loader)


def test_a_freeze_state_without_its_policy_arguments_says_which() -> None:
    with pytest.raises(ValueError, match=r"freeze policy 'last_n' needs n; .*FreezeState\.make"):
        FreezeState(policy="last_n").num_trainable(5)
    with pytest.raises(ValueError, match=r"freeze policy 'gradual' needs step"):
        FreezeState(policy="gradual", n=1).num_trainable(5)
    assert FreezeState.make("gradual", 5, "frozen", n=1).num_trainable(5) == 1  # make fills them in


def test_a_voc_box_without_a_coordinate_names_it(tmp_path: Path) -> None:
    split = tmp_path / "train"
    (split / "images").mkdir(parents=True)
    (split / "annotations").mkdir()
    Image.new("RGB", (40, 30)).save(split / "images" / "a.png")
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax></bndbox>"  # no ymax
    xml = f"<annotation><object><name>cat</name>{box}</object></annotation>"
    (split / "annotations" / "a.xml").write_text(xml)
    with pytest.raises(ValueError, match=r"cannot read the VOC annotation .*a\.xml: <bndbox> has no <ymax>"):
        DetectionFolder(split)
