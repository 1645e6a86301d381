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


# ------------------------------------------------------------------------------- state across resume
class _Interrupt:
    """Stops the process after the checkpoint of epoch ``at`` (from 0) is written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch == self.at:
            raise KeyboardInterrupt


class _Counter:
    """Counts the batches it saw; its count is saved in the checkpoint."""

    def __init__(self) -> None:
        self.batches = 0

    def on_batch_end(self, trainer: Trainer) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches = state["batches"]


def _resumable(folder: Path, callbacks: list, resume: bool) -> Trainer:
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", num_classes=3, pretrained=False)
    model.freeze()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g))
    trainer = Trainer(
        model, epochs=4, progress=False, callbacks=callbacks, checkpoint_dir=folder, resume=resume
    )
    trainer.fit(DataLoader(data, batch_size=8))  # 2 batches: 2 optimizer steps per epoch
    return trainer


def test_tensorboard_curves_continue_after_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoard(tmp_path / "tb", log_every=1)
    with pytest.raises(KeyboardInterrupt):
        _resumable(tmp_path / "ckpt", [first, _Interrupt(at=1)], resume=False)
    assert first._writer is None  # on_exception closed the interrupted fit's event file
    trainer = _resumable(tmp_path / "ckpt", [TensorBoard(tmp_path / "tb", log_every=1)], resume=True)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_step")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.step for e in events.Scalars("epoch/lr")] == [2, 4, 6, 8]
    assert len(events.Scalars("train/train_loss")) == 4
    assert trainer.global_step == 8


def test_callback_state_is_saved_in_the_checkpoint_and_restored(tmp_path: Path) -> None:
    counter = _Counter()
    with pytest.raises(KeyboardInterrupt):
        _resumable(tmp_path, [counter, _Interrupt(at=1)], resume=False)
    assert counter.batches == 4
    assert torch.load(tmp_path / "last.pt", weights_only=True)["callbacks"][0] == {
        "name": "_Counter",
        "state": {"batches": 4},
    }
    resumed = _Counter()
    _resumable(tmp_path, [resumed], resume=True)
    assert resumed.batches == 8  # 4 before the interruption, 4 after


def test_callback_state_that_a_checkpoint_cannot_hold_is_named(tmp_path: Path) -> None:
    class Odd(_Counter):
        def state_dict(self) -> dict[str, object]:  # type: ignore[override]
            return {"batches": self.batches, "seen": {object()}}

    with pytest.raises(TypeError, match=r"callback Odd.state_dict\(\) returned a set inside"):
        _resumable(tmp_path, [Odd()], resume=False)


def test_on_exception_hears_why_fit_stopped_and_a_failing_handler_hides_nothing() -> None:
    heard: list[tuple[str, object]] = []

    class Fails:
        def on_epoch_end(self, trainer: Trainer) -> None:
            raise RuntimeError("bad epoch")

    class Listens:
        def on_exception(self, trainer: Trainer, error: BaseException) -> None:
            heard.append(("listens", error))

        def on_fit_end(self, trainer: Trainer) -> None:
            heard.append(("fit_end", None))

    class Broken:
        def on_exception(self, trainer: Trainer, error: BaseException) -> None:
            raise OSError("disk full")

    with pytest.warns(UserWarning, match="Broken.on_exception raised OSError: disk full"):
        with pytest.raises(RuntimeError, match="bad epoch") as raised:
            _run([Fails(), Broken(), Listens()])
    assert heard == [("listens", raised.value)]  # called with the error, after the broken one; no fit_end
