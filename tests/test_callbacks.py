"""The shipped callbacks: history.csv written as training goes, and TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.training import CSVLogger, TensorBoard
from transferkit.training.callbacks import read_history_csv


def _run(callbacks, epochs: int = 3):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", num_classes=3, pretrained=False)
    model.freeze()
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    loaders = {"train": DataLoader(data, batch_size=8), "val": DataLoader(data, batch_size=8)}
    return Trainer(model, epochs=epochs, progress=False, callbacks=callbacks).fit(loaders)


def test_history_csv_equals_the_returned_history_after_every_epoch(tmp_path: Path) -> None:
    path = tmp_path / "run" / "history.csv"
    seen: list[int] = []

    class Reader:  # runs after the logger: the file already holds this epoch
        def on_epoch_end(self, trainer: Trainer) -> None:
            seen.append(len(read_history_csv(path)))

    history = _run([CSVLogger(path), Reader()])
    assert seen == [1, 2, 3]
    rows = read_history_csv(path)
    assert len(rows) == len(history)
    for row, expected in zip(rows, history, strict=True):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-12), key
    assert not list(path.parent.glob("*.tmp"))


def test_tensorboard_writes_every_epoch_value(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = _run([TensorBoard(tmp_path / "tb", log_every=1)], epochs=2)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/train_loss", "val/val_loss", "val/val_acc", "epoch/lr", "train/loss_step"} <= tags
    losses = [e.value for e in events.Scalars("val/val_loss")]
    assert losses == pytest.approx([row["val_loss"] for row in history], rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss_step")] == [1, 2, 3, 4]


def test_tensorboard_refuses_a_negative_interval(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with pytest.raises(ValueError, match="log_every"):
        TensorBoard(tmp_path, log_every=-1)
