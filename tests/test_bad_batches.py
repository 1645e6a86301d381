"""Bad training data (issue #23): NaN or infinite validation inputs, a diverged validation, batches of one.

A validation input holding NaN is an error naming the batch and its samples, raised before any state is
damaged; a non-finite validation from finite inputs warns and never wins "best". A training batch of one
sample that BatchNorm cannot normalise (12 images in batches of 11, at 32 px where ResNet's last maps are
1x1) is skipped with one warning, leaves no trace, and keeps exact resume.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.data import make_shapes_folder
from transferkit.training.best import BestEpoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


def _data(n: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator)
    return TensorDataset(images, torch.arange(n) % 3)


def _model(seed: int = 0, backbone: str = "resnet18", frozen: bool = False):
    torch.manual_seed(seed)
    model = build_model(backbone, num_classes=3, pretrained=False)  # nothing frozen: BatchNorm trains
    if frozen:
        model.freeze()
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not different, f"tensors differ: {different[:5]}"


class EpochWeights:
    """Callback keeping a copy of the weights at the end of every epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.states.append(_state(trainer.model))


class Interrupt(Exception):
    pass


class InterruptAfter:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            raise Interrupt


# ------------------------------------------------------------------------------------ non-finite validation
class SpoilPixel:
    """Callback that puts a NaN into one validation image at the start of the given epoch."""

    def __init__(self, images: torch.Tensor, index: int, epoch: int) -> None:
        self.images, self.index, self.epoch = images, index, epoch

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            self.images[self.index, 1, 5, 7] = math.nan


def test_nan_validation_input_names_batch_and_sample_and_loses_nothing(tmp_path) -> None:
    images, labels = _data(6, seed=1).tensors
    images = images.clone()
    weights = EpochWeights()
    callbacks = [weights, SpoilPixel(images, index=3, epoch=1)]  # batch 2 (of batches of 2), sample 1
    trainer = Trainer(
        _model(frozen=True), epochs=3, checkpoint_dir=tmp_path, progress=False, callbacks=callbacks
    )
    with pytest.raises(
        ValueError, match=r"epoch 2, evaluation batch 2 .* sample \[1\] .*dataset index \[3\]"
    ) as err:
        trainer.fit(
            {"train": DataLoader(_data(8), batch_size=4), "val": DataLoader(TensorDataset(images, labels), 2)}
        )
    assert "Fix or drop those images" in str(err.value)
    # The second epoch trained before its validation failed: the model is back at the end of the first.
    _assert_same_state(_state(trainer.model), weights.states[0])
    assert len(trainer.history) == 1 and torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 0


def test_infinite_input_to_evaluate_names_the_batch() -> None:
    images, labels = _data(4).tensors
    images = images.clone()
    images[0, 0, 0, 0] = -math.inf
    with pytest.raises(
        ValueError, match=r"at evaluation batch 1 hold NaN or infinite values in sample \[0\]"
    ):
        Trainer(_model(frozen=True), progress=False).evaluate(DataLoader(TensorDataset(images, labels), 4))


def test_diverged_validation_warns_and_is_never_the_best_epoch() -> None:
    """Finite inputs, but the validation loss of the first epoch is NaN from its second batch on."""
    trainer: Trainer
    calls = {"eval": 0}

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        value = F.cross_entropy(logits, targets)
        if trainer.model.training or trainer.epoch != 0:
            return value
        calls["eval"] += 1
        return value * math.nan if calls["eval"] >= 2 else value

    weights = EpochWeights()
    trainer = Trainer(
        _model(frozen=True), epochs=3, lr=1e-2, loss=loss, progress=False, callbacks=[weights], seed=0
    )
    with pytest.warns(
        RuntimeWarning, match=r"validation at epoch 1 gave non-finite loss, first at evaluation batch 2"
    ):
        history = trainer.fit(
            {"train": DataLoader(_data(8), batch_size=4), "val": DataLoader(_data(6, 1), 2)}
        )
    assert math.isnan(history[0]["val_loss"])
    assert trainer.best.epoch in (1, 2)
    _assert_same_state(_state(trainer.model), weights.states[trainer.best.epoch])


def test_non_finite_scores_never_win_best_and_count_against_patience() -> None:
    model = torch.nn.Linear(1, 1)
    best = BestEpoch("val_loss", keep_weights=True, patience=1)
    best.update({"epoch": 0, "val_loss": math.nan}, model)
    assert (best.epoch, best.weights) == (None, None)
    assert best.out_of_patience(1)  # one epoch without a finite score: patience 1 is spent
    best.update({"epoch": 1, "val_loss": 2.0}, model)
    best.update({"epoch": 2, "val_loss": -math.inf}, model)
    assert (best.epoch, best.score) == (1, 2.0)


# ------------------------------------------------------------------------------------- batches of one sample
def test_batch_of_one_is_skipped_once_warned_and_leaves_no_trace() -> None:
    def fit(n: int, batch_size: int) -> tuple[dict[str, torch.Tensor], Trainer]:
        trainer = Trainer(_model(), epochs=2, scheduler="none", progress=False, seed=0)
        trainer.fit(DataLoader(_data(n), batch_size=batch_size))
        return _state(trainer.model), trainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipped, trainer = fit(12, 11)  # batches of 11 and 1, each epoch
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages  # once per fit, not per epoch
    assert "epoch 1, batch 2 holds one sample (12 samples in batches of 11 leave 1 over)" in messages[0]
    assert "drop_last=True" in messages[0] and "--batch-size" in messages[0]
    assert trainer.scheduler.last_epoch == 2  # one optimizer step per epoch: the skipped batch took none
    assert all(math.isfinite(row["train_loss"]) for row in trainer.history)
    reference, _ = fit(11, 11)  # the same run without the twelfth sample
    _assert_same_state(skipped, reference)


def test_skipped_batch_in_an_accumulation_window_averages_over_the_batches_that_trained() -> None:
    def fit(n: int, grad_accum: int) -> dict[str, torch.Tensor]:
        trainer = Trainer(
            _model(), epochs=1, lr=0.1, optimizer=lambda g: torch.optim.SGD(g), weight_decay=0.0,
            scheduler="none", grad_accum=grad_accum, progress=False,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            trainer.fit(DataLoader(_data(n), batch_size=4))
        assert trainer.scheduler.last_epoch == 1
        return _state(trainer.model)

    accumulated, reference = fit(9, grad_accum=3), fit(8, grad_accum=2)  # batches 4, 4, 1 vs 4, 4
    for key in reference:
        torch.testing.assert_close(accumulated[key], reference[key])


@pytest.mark.parametrize("sampler", ["batch_size=1", "batch_sampler"])
def test_only_batches_of_one_is_an_error_that_names_the_ways_out(sampler: str) -> None:
    model = _model()
    before = _state(model)
    if sampler == "batch_size=1":
        loader = DataLoader(_data(3), batch_size=1)
    else:
        loader = DataLoader(_data(3), batch_sampler=[[0], [1], [2]])
    with (
        warnings.catch_warnings(),
        pytest.raises(
            ValueError, match=r"every training batch .*holds one sample.*batch_size=2 or more.*frozen_all"
        ),
    ):
        warnings.simplefilter("ignore", UserWarning)  # the batch sampler's batches are skipped, then refused
        Trainer(model, epochs=1, progress=False).fit(loader)
    _assert_same_state(_state(model), before)


def test_batch_of_one_trains_where_batch_norm_can_normalise_it() -> None:
    """At 64 px ResNet's last maps are 2x2: one sample still gives BatchNorm 4 values per channel."""
    images = torch.randn(5, 3, 64, 64)
    trainer = Trainer(_model(), epochs=1, scheduler="none", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer.fit(DataLoader(TensorDataset(images, torch.arange(5) % 3), batch_size=4))
    assert trainer.scheduler.last_epoch == 2  # the batch of one trained and stepped


@pytest.mark.filterwarnings("ignore:the training batch at:UserWarning")
def test_resume_with_a_skipped_batch_is_bit_identical(tmp_path) -> None:
    def fit(folder, callbacks=(), resume=False, seed=0):
        model = _model(seed, backbone="mobilenet_v3_small")  # small: every epoch writes a checkpoint
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(_data(12), batch_size=11, shuffle=True, generator=generator)
        trainer = Trainer(
            model, epochs=3, checkpoint_dir=folder, resume=resume, progress=False, seed=0,
            callbacks=list(callbacks),
        )  # fmt: skip
        return model, trainer.fit({"train": train, "val": DataLoader(_data(4, 1), batch_size=4)})

    with pytest.warns(UserWarning, match="holds one sample"):
        reference, full = fit(tmp_path / "full")
    with pytest.raises(Interrupt):
        fit(tmp_path / "cut", callbacks=[InterruptAfter(0)])
    resumed, history = fit(
        tmp_path / "cut", resume=True, seed=5
    )  # other weights and shuffle: all from the file
    _assert_same_state(_state(resumed), _state(reference))
    assert [row["train_loss"] for row in history] == [row["train_loss"] for row in full]


def test_lr_find_skips_a_batch_of_one() -> None:
    trainer = Trainer(_model(), progress=False)
    with pytest.warns(UserWarning, match="holds one sample"):
        result = trainer.lr_find(DataLoader(_data(12), batch_size=11), steps=4)
    assert len(result.lrs) == 4


def test_cli_train_with_a_batch_of_one_left_over(tmp_path) -> None:
    data = make_shapes_folder(
        tmp_path / "data", num_classes=2, per_class={"train": 6, "val": 2}, image_size=SIZE
    )
    with pytest.warns(UserWarning, match=r"12 samples in batches of 11 leave 1 over.*--batch-size"):
        result = run(
            "train", "--data", data, "--backbone", "resnet18", "--pretrained", "false", "--freeze", "none",
            "--epochs", 1, "--batch-size", 11, "--image-size", SIZE, "--out", tmp_path / "run",
        )  # fmt: skip
    assert result.code == 0, result.err
    assert "Expected more than 1 value per channel" not in result.err
