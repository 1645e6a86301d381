"""Trainer: learning, metrics, freezing through fit, resume, best-epoch restore, errors, schedules."""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from transferkit import Trainer, build_model
from transferkit.data import SyntheticShapes

SIZE = 32


@functools.lru_cache
def _shapes(n: int, task: str = "classification", seed: int = 0) -> TensorDataset:
    """SyntheticShapes rendered once into tensors (3 shape kinds; masks have background + 3)."""
    ds = SyntheticShapes(n, image_size=SIZE, num_classes=3, task=task, seed=seed)
    images, targets = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(np.stack(targets)))


def _loader(ds: Dataset, batch_size: int = 8, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _classifier(seed: int = 0, frozen: bool = False, backbone: str = "resnet18"):
    """A linear-head classifier; ``frozen`` freezes the backbone, for fast tests of the loop's mechanics."""
    torch.manual_seed(seed)
    model = build_model(backbone, neck="identity", head="linear", num_classes=3, pretrained=False)
    if frozen:
        model.freeze()
    return model


def _segmenter(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=4, pretrained=False)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def _block_state(model, block: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State entries of one backbone block: its parameters and its modules' buffers (BN statistics)."""
    modules = {"backbone." + name.rpartition(".")[0] for name in model.backbone.blocks[block]}
    return {k: v for k, v in state.items() if k.rpartition(".")[0] in modules}


class Recorder:
    """Callback recording events and a CPU copy of the weights at the end of every epoch."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.events.append("fit_start")

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.events.append(f"epoch_start {trainer.epoch}")

    def on_batch_end(self, trainer: Trainer) -> None:
        self.events.append("batch")

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.events.append(f"epoch_end {trainer.epoch}")
        self.states.append(_state(trainer.model))

    def on_fit_end(self, trainer: Trainer) -> None:
        self.events.append("fit_end")


# ------------------------------------------------------------------------------------------- learning
def test_classification_loss_falls_and_history_has_contract_keys() -> None:
    model = _classifier()
    train, val = _loader(_shapes(32), shuffle=True), _loader(_shapes(16, seed=1))
    history = Trainer(model, epochs=4, lr=3e-3, progress=False, seed=0).fit({"train": train, "val": val})
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    contract = {"epoch", "train_loss", "lr", "trainable_blocks", "seconds", "val_loss", "val_acc"}
    assert contract <= set(history[0])
    assert all(row["trainable_blocks"] == len(model.blocks) for row in history)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]


def test_segmentation_loss_falls() -> None:
    model = _segmenter()
    train = _loader(_shapes(16, "segmentation"), batch_size=4, shuffle=True)
    history = Trainer(model, epochs=3, lr=1e-3, progress=False, seed=0).fit(train)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert "val_loss" not in history[0]


def test_classification_metrics_match_hand_computation() -> None:
    model = _classifier()
    val = _shapes(10, seed=2)  # batches of 4, 4, 2: the loss must be a per-sample mean, not per batch
    trainer = Trainer(model, progress=False)
    metrics = trainer.evaluate(_loader(val, batch_size=4))
    model.eval()
    with torch.no_grad():
        logits = model(val.tensors[0])
    labels = val.tensors[1]
    losses = [F.cross_entropy(logits[i : i + 1], labels[i : i + 1]).item() for i in range(10)]
    correct = sum(int(logits[i].argmax()) == int(labels[i]) for i in range(10))
    assert metrics["loss"] == pytest.approx(sum(losses) / 10, rel=1e-5)
    assert metrics["acc"] == correct / 10


def test_segmentation_metrics_match_hand_computation() -> None:
    model = _segmenter()
    images, masks = _shapes(4, "segmentation", seed=3).tensors
    masks = masks.clone()
    masks[:, :4] = 255  # a band of ignored pixels
    trainer = Trainer(model, progress=False)
    metrics = trainer.evaluate(_loader(TensorDataset(images, masks), batch_size=3))
    model.eval()
    with torch.no_grad():
        logits = model(images)
    pred, valid = logits.argmax(1), masks != 255
    ious = []
    for c in range(4):
        inter = ((pred == c) & (masks == c) & valid).sum().item()
        union = (((pred == c) | (masks == c)) & valid).sum().item()
        if union:
            ious.append(inter / union)
    assert metrics["miou"] == pytest.approx(sum(ious) / len(ious))
    assert metrics["acc"] == pytest.approx(((pred == masks) & valid).sum().item() / valid.sum().item())
    per_image = [F.cross_entropy(logits[i : i + 1], masks[i : i + 1], ignore_index=255) for i in range(4)]
    assert metrics["loss"] == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)


def test_history_val_metrics_are_the_final_weights_metrics() -> None:
    model = _segmenter()
    train, val = _loader(_shapes(8, "segmentation")), _loader(_shapes(6, "segmentation", seed=1), 4)
    trainer = Trainer(model, epochs=1, progress=False, restore_best=False)
    row = trainer.fit((train, val))[-1]
    assert {"val_loss", "val_miou", "val_acc"} <= set(row)
    metrics = trainer.evaluate(val)
    assert [row["val_loss"], row["val_miou"], row["val_acc"]] == [metrics[k] for k in ("loss", "miou", "acc")]


def test_predict_returns_logits_in_loader_order() -> None:
    model = _classifier()
    images = _shapes(10).tensors[0]
    trainer = Trainer(model, progress=False)
    out = trainer.predict(DataLoader(images, batch_size=4))  # batches of inputs alone
    model.eval()
    with torch.no_grad():
        expected = model(images)
    assert out.shape == (10, 3) and out.device.type == "cpu"
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(trainer.predict(_loader(_shapes(10), 3)), expected)  # (inputs, targets)


# ------------------------------------------------------------------------------------------- freezing
def test_gradual_unfreezing_trains_each_block_from_its_epoch() -> None:
    model = _classifier()
    model.freeze(policy="gradual", n=0, step=1, every=1)
    initial, recorder = _state(model), Recorder()
    trainer = Trainer(model, epochs=4, lr=1e-2, scheduler="none", progress=False, callbacks=[recorder])
    history = trainer.fit(_loader(_shapes(16)))
    assert [row["trainable_blocks"] for row in history] == [0, 1, 2, 3]
    blocks = model.blocks
    for epoch, state in enumerate(recorder.states):
        before = initial if epoch == 0 else recorder.states[epoch - 1]
        for position, block in enumerate(reversed(blocks)):
            now, then = _block_state(model, block, state), _block_state(model, block, before)
            first_epoch = position + 1  # with n=0, step=1 the last block starts at epoch 1
            if epoch < first_epoch:
                _assert_same_state(now, _block_state(model, block, initial))  # frozen: bit-identical
            else:
                assert any(not torch.equal(now[k], then[k]) for k in now), f"{block} idle at epoch {epoch}"
    head_keys = [k for k in initial if k.startswith("head.")]
    assert any(not torch.equal(recorder.states[0][k], initial[k]) for k in head_keys)


def test_frozen_prefix_runs_without_autograd() -> None:
    model = _classifier()
    model.freeze(policy="last_n", n=2)
    seen: dict[str, bool] = {}

    def record(block: str):
        def hook(module, inputs, output) -> None:
            seen.setdefault(block, output.requires_grad)

        return hook

    first, last = model.blocks[0], model.blocks[-1]
    for block in (first, last):  # the module holding each block's last parameter
        module_path = model.backbone.blocks[block][-1].rpartition(".")[0]
        model.backbone.get_submodule(module_path).register_forward_hook(record(block))
    Trainer(model, epochs=1, progress=False).fit(_loader(_shapes(8)))
    assert seen == {first: False, last: True}


# --------------------------------------------------------------------------------------------- resume
class Augmented(Dataset):
    """Random flips and noise from torch, numpy and python RNGs, so resuming must restore all three."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        noise = float(np.random.uniform(-0.1, 0.1)) + random.uniform(-0.1, 0.1)
        return image + noise, label


class Interrupt(Exception):
    pass


class InterruptAfter:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch == self.epoch:
            raise Interrupt


def _resumable_run(tmp_path, *, model_seed: int, loader_seed: int, callbacks=(), resume=False):
    model = _classifier(model_seed, backbone="mobilenet_v3_small")  # small: every epoch writes a checkpoint
    model.freeze(policy="gradual", n=0, step=2, every=1)
    train = _loader(Augmented(_shapes(24)), batch_size=8, shuffle=True, seed=loader_seed)
    val = _loader(_shapes(8, seed=1))
    trainer = Trainer(
        model, epochs=4, lr=5e-3, scheduler="cosine", checkpoint_dir=tmp_path, resume=resume,
        progress=False, seed=0, callbacks=list(callbacks),
    )  # fmt: skip
    return model, trainer.fit({"train": train, "val": val})


def test_resume_after_interruption_is_bit_identical(tmp_path) -> None:
    reference, full_history = _resumable_run(tmp_path / "full", model_seed=0, loader_seed=0)
    with pytest.raises(Interrupt):
        _resumable_run(tmp_path / "cut", model_seed=0, loader_seed=0, callbacks=[InterruptAfter(1)])
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    # A fresh model with other weights and a loader seeded otherwise: all must come from the checkpoint.
    resumed, history = _resumable_run(tmp_path / "cut", model_seed=7, loader_seed=99, resume=True)
    _assert_same_state(_state(resumed), _state(reference))
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in full_history]
    assert [row["trainable_blocks"] for row in history] == [min(2 * e, len(resumed.blocks)) for e in range(4)]


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch) -> None:
    model = _classifier(frozen=True, backbone="mobilenet_v3_small")
    train = _loader(_shapes(8))
    first = Trainer(model, epochs=2, checkpoint_dir=tmp_path, progress=False, callbacks=[InterruptAfter(0)])
    with pytest.raises(Interrupt):
        first.fit(train)
    good = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(len(good) // 2)
        f.truncate()
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(OSError, match="disk full"):
        Trainer(model, epochs=2, checkpoint_dir=tmp_path, resume=True, progress=False).fit(train)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    # A kill -9 mid-write leaves a stale temp file: resuming ignores it and goes on from epoch 0.
    (tmp_path / "last.pt.tmp").write_bytes(b"garbage")
    history = Trainer(model, epochs=2, checkpoint_dir=tmp_path, resume=True, progress=False).fit(train)
    assert [row["epoch"] for row in history] == [0, 1]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


# ------------------------------------------------------------------------------- best epoch, stopping
class Sabotage:
    """Before the given epochs, makes the head predict class 0 for everything, by a wide margin.

    On balanced validation data that gives accuracy 1/3 and a huge loss, which a few small steps cannot
    repair: an earlier epoch is then the best (ties go to the earliest epoch).
    """

    def __init__(self, epochs: set[int]) -> None:
        self.epochs = epochs

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch in self.epochs:
            with torch.no_grad():
                for p in trainer.model.head.parameters():
                    p.zero_()
                    if p.shape == (3,):  # the classifier's bias
                        p[0] = 100.0


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc"])
def test_restore_best_keeps_the_best_epoch(monitor: str) -> None:
    model, recorder = _classifier(frozen=True), Recorder()
    trainer = Trainer(
        model, epochs=4, lr=3e-3, scheduler="none", monitor=monitor, progress=False, seed=0,
        callbacks=[recorder, Sabotage({2, 3})],
    )  # fmt: skip
    history = trainer.fit({"train": _loader(_shapes(16)), "val": _loader(_shapes(12, seed=1))})
    scores = [row[monitor] for row in history]
    best = scores.index(min(scores) if monitor == "val_loss" else max(scores))
    assert best < 3, "the sabotage should make a middle epoch the best"
    _assert_same_state(_state(model), recorder.states[best])
    assert trainer.evaluate(_loader(_shapes(12, seed=1)))[monitor[4:]] == history[best][monitor]


def test_restore_best_false_keeps_the_last_weights() -> None:
    model, recorder = _classifier(frozen=True), Recorder()
    callbacks = [recorder, Sabotage({2})]
    trainer = Trainer(model, epochs=3, progress=False, restore_best=False, callbacks=callbacks)
    trainer.fit((_loader(_shapes(8)), _loader(_shapes(8, seed=1))))
    _assert_same_state(_state(model), recorder.states[-1])


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc"])
def test_early_stopping_stops_after_patience(monitor: str) -> None:
    model = _classifier(frozen=True)  # a frozen backbone and a zero learning rate: no epoch improves
    frozen_sgd = lambda groups: torch.optim.SGD([{**g, "lr": 0.0} for g in groups])  # noqa: E731
    trainer = Trainer(
        model, epochs=10, optimizer=frozen_sgd, early_stopping=2, monitor=monitor, progress=False
    )
    history = trainer.fit({"train": _loader(_shapes(8)), "val": _loader(_shapes(8, seed=1))})
    assert len(history) == 3


def test_early_stopping_counts_from_the_last_improvement() -> None:
    scripted = [5.0, 4.0, 4.5, 3.0, 3.5, 3.75, 2.0, 1.0]  # the train loss of each epoch
    trainer: Trainer

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets) * 0 + scripted[trainer.epoch]

    model = _classifier(frozen=True)
    trainer = Trainer(model, epochs=8, loss=loss, early_stopping=2, monitor="train_loss", progress=False)
    history = trainer.fit(_loader(_shapes(8)))
    assert [row["train_loss"] for row in history] == scripted[:6]  # best at 3, no gain at 4 and 5: stop


# ------------------------------------------------------------------------------------------------ errors
def test_out_of_range_class_raises_before_the_step() -> None:
    model = _classifier(frozen=True)
    images, labels = _shapes(16).tensors
    labels = labels.clone()
    labels[11] = 3  # batch 1 of 2, num_classes is 3
    initial = _state(model)
    with pytest.raises(ValueError, match=r"target value 3 at epoch 1, batch 2 .*\[0, 3\)"):
        Trainer(model, epochs=2, progress=False).fit(_loader(TensorDataset(images, labels)))
    _assert_same_state(_state(model), initial)


@pytest.mark.parametrize("bad", [4, -1])
def test_bad_mask_value_raises_but_255_is_allowed(bad: int) -> None:
    images, masks = _shapes(4, "segmentation").tensors
    masks = masks.clone()
    masks[0, 0, :5] = 255
    Trainer(_segmenter(), epochs=1, progress=False).fit(_loader(TensorDataset(images, masks), 2))
    masks[1, 3, 3] = bad
    with pytest.raises(ValueError, match=f"target value {bad} at epoch 1, batch 1"):
        Trainer(_segmenter(), epochs=1, progress=False).fit(_loader(TensorDataset(images, masks), 2))


def test_non_finite_loss_stops_and_keeps_the_last_good_epoch() -> None:
    model, recorder = _classifier(frozen=True), Recorder()
    trainer: Trainer

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        value = F.cross_entropy(logits, targets)
        return value * math.nan if (trainer.epoch, trainer.step) == (1, 1) else value

    trainer = Trainer(model, epochs=3, loss=loss, progress=False, callbacks=[recorder])
    with pytest.raises(FloatingPointError, match="epoch 2, batch 2"):  # trainer.epoch 1, step 1
        trainer.fit(_loader(_shapes(16)))
    assert len(recorder.states) == 1
    _assert_same_state(_state(model), recorder.states[0])


@pytest.mark.parametrize("which", ["train", "val"])
def test_empty_loader_raises(which: str) -> None:
    loaders = {"train": _loader(_shapes(8)), "val": _loader(_shapes(8))}
    loaders[which] = DataLoader(TensorDataset(torch.zeros(0, 3, SIZE, SIZE), torch.zeros(0)), batch_size=2)
    with pytest.raises(ValueError, match=f"{which} loader is empty"):
        Trainer(_classifier(frozen=True), progress=False).fit(loaders)


def test_bad_arguments_raise() -> None:
    model = _classifier(frozen=True)
    with pytest.raises(ValueError, match="cache_budget"):
        Trainer(model, cache_features=True, cache_budget=-1)
    with pytest.raises(ValueError, match="scheduler"):
        Trainer(model, scheduler="linear")
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(model, optimizer="lion")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Trainer(model, resume=True)
    with pytest.raises(TypeError, match="callback"):
        Trainer(model, callbacks=[object()])
    with pytest.raises(ValueError, match="validation loader"):
        Trainer(model, monitor="val_acc", progress=False).fit(_loader(_shapes(8)))
    with pytest.raises(ValueError, match="'test'"):
        Trainer(model, progress=False).fit({"train": _loader(_shapes(8)), "test": _loader(_shapes(8))})


# ------------------------------------------------------------------------------- optimisation details
def _lrs(scheduler, epochs: int = 3) -> list[float]:
    trainer = Trainer(_classifier(frozen=True), epochs=epochs, lr=0.1, scheduler=scheduler, progress=False)
    history = trainer.fit(_loader(_shapes(16)))  # 2 steps per epoch
    return [row["lr"] for row in history]


def test_schedulers() -> None:
    assert _lrs("none") == pytest.approx([0.1] * 3)
    assert _lrs("cosine") == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)])
    assert _lrs("step") == pytest.approx([0.1, 0.01, 0.001])
    onecycle = _lrs("onecycle")
    assert onecycle[0] == pytest.approx(0.1 / 25) and max(onecycle) > onecycle[0]
    custom = _lrs(lambda opt, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s // 2)))
    assert custom == pytest.approx([0.1, 0.05, 0.025])


def test_grad_accum_matches_one_big_batch() -> None:
    # Frozen backbone (so batch norm sees no batch statistics) and plain SGD: accumulating batches of 4
    # in windows of 2 (the last window short) equals batches of 8 and 4.
    def run(batch_size: int, grad_accum: int) -> dict[str, torch.Tensor]:
        model = _classifier(frozen=True)
        trainer = Trainer(
            model, epochs=1, lr=0.5, optimizer=lambda g: torch.optim.SGD(g), weight_decay=0.0,
            scheduler="none", grad_accum=grad_accum, progress=False,
        )  # fmt: skip
        trainer.fit(_loader(_shapes(12), batch_size=batch_size))
        assert trainer.scheduler.last_epoch == 2  # two optimizer steps
        return _state(model)

    accumulated, direct = run(4, 2), run(8, 1)
    for key in direct:
        torch.testing.assert_close(accumulated[key], direct[key])


def test_clip_grad_norm_bounds_the_update() -> None:
    model = _classifier()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model, epochs=1, lr=1.0, optimizer=lambda g: torch.optim.SGD(g), weight_decay=0.0,
        scheduler="none", clip_grad_norm=1e-3, progress=False,
    )  # fmt: skip
    trainer.fit(_loader(_shapes(8)))  # a single step: the update is lr * clipped gradient
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert 0 < change.norm() <= 1e-3 * 1.001


def test_layer_decay_and_backbone_lr_mult_reach_the_optimizer() -> None:
    model = _classifier()
    trainer = Trainer(model, lr=0.1, layer_decay=0.5, backbone_lr_mult=0.1, weight_decay=0.05)
    expected = model.param_groups(0.1, layer_decay=0.5, backbone_lr_mult=0.1, weight_decay=0.05)
    got = [(g["name"], g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups]
    assert got == [(g["name"], g["lr"], g["weight_decay"]) for g in expected]
    assert len({g["lr"] for g in expected}) > 2


def test_compile_trains_through_torch_compile(monkeypatch) -> None:
    compiled: list[torch.nn.Module] = []

    def fake_compile(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _classifier(frozen=True)
    model.freeze(policy="gradual", n=0, step=1)
    Trainer(model, epochs=3, compile=True, progress=False).fit(_loader(_shapes(8)))
    assert compiled == [model] * 3  # built again whenever the set of trainable parameters changes


def test_seed_makes_fit_reproducible() -> None:
    def run() -> dict[str, torch.Tensor]:
        model = _classifier()  # a shuffling loader without a generator: the seed decides the order
        Trainer(model, epochs=1, progress=False, seed=3).fit(
            DataLoader(_shapes(16), batch_size=8, shuffle=True)
        )
        return _state(model)

    _assert_same_state(run(), run())


# ------------------------------------------------------------------------------------ events, output
def test_callbacks_receive_events_in_order_and_can_stop() -> None:
    recorder = Recorder()

    class StopAfterFirst:
        def on_epoch_end(self, trainer: Trainer) -> None:
            trainer.should_stop = True

    trainer = Trainer(
        _classifier(frozen=True), epochs=5, progress=False, callbacks=[recorder, StopAfterFirst()]
    )
    history = trainer.fit(_loader(_shapes(16)))
    assert len(history) == 1
    assert recorder.events == ["fit_start", "epoch_start 0", "batch", "batch", "epoch_end 0", "fit_end"]


def test_progress_false_prints_nothing_and_true_shows_the_loss(capfd) -> None:
    loaders = (_loader(_shapes(8)), _loader(_shapes(8)))
    Trainer(_classifier(frozen=True), epochs=1, progress=False).fit(loaders)
    assert capfd.readouterr() == ("", "")
    Trainer(_classifier(frozen=True), epochs=1, progress=True).fit(_loader(_shapes(8)))
    out, err = capfd.readouterr()  # not a terminal: one plain line per epoch (tests/test_progress.py)
    assert out == "" and err.startswith("epoch 1/1: train_loss ") and err.count("\n") == 1


def test_fit_accepts_the_three_loader_forms() -> None:
    train, val = _loader(_shapes(8)), _loader(_shapes(8, seed=1))
    forms = [
        ({"train": train, "val": val}, True),
        ((train, val), True),
        ({"train": train}, False),
        (train, False),
    ]
    for loaders, validated in forms:
        history = Trainer(_classifier(frozen=True), epochs=1, progress=False).fit(loaders)
        assert ("val_loss" in history[0]) == validated


# ------------------------------------------------------------------------------------------------ GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_cuda_mixed_precision_channels_last(precision: str) -> None:
    model = _classifier()
    model.freeze(policy="last_n", n=2)
    trainer = Trainer(model, epochs=2, lr=3e-3, precision=precision, progress=False, seed=0)
    assert trainer.device.type == "cuda"
    expected = torch.float16 if precision == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16
    assert trainer.amp_dtype == expected and trainer.scaler.is_enabled() == (expected == torch.float16)
    history = trainer.fit((_loader(_shapes(32), shuffle=True), _loader(_shapes(16, seed=1))))
    assert all(math.isfinite(row["train_loss"]) for row in history)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.predict(_loader(_shapes(8))).dtype == torch.float32
