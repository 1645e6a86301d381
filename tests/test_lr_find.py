"""Trainer.lr_find: an exponential sweep that leaves model, optimizer and RNG exactly as they were."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.cli import main
from transferkit.data import make_shapes_folder
from transferkit.training.lr_find import LRFindResult, _smooth, _suggest


def _loader(n: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)
    x[:, 0] += y[:, None, None].float()  # learnable: the class shifts the first channel
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)


def _trainer() -> Trainer:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, pretrained=False)
    model.freeze("last_n", n=1)  # the last block's BatchNorm trains: its buffers move during the sweep
    return Trainer(model, epochs=1, lr=1e-3, layer_decay=0.5, progress=False, device="cpu")


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def test_lr_find_leaves_model_optimizer_scaler_and_rng_exactly_as_before(one_torch_thread) -> None:
    trainer, loader = _trainer(), _loader()
    trainer.fit(loader)  # a non-empty optimizer state (AdamW moments, step counts) to keep
    trainer.model.eval()
    model_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optimizer_before = copy.deepcopy(trainer.optimizer.state_dict())
    scaler_before, rng_before = trainer.scaler.state_dict(), torch.get_rng_state()

    result = trainer.lr_find(loader, steps=12)

    assert len(result.lrs) > 3  # it did train: the weights moved during the sweep
    assert _same(trainer.model.state_dict(), model_before)
    assert _same(trainer.optimizer.state_dict(), optimizer_before)
    assert _same(trainer.scaler.state_dict(), scaler_before)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not trainer.model.training
    assert all(p.grad is None for p in trainer.model.parameters())


def test_sweep_is_exponential_keeps_group_ratios_and_stops_on_divergence(one_torch_thread) -> None:
    trainer = _trainer()
    ratios = [lr / max(trainer.base_lrs) for lr in trainer.base_lrs]
    seen: list[list[float]] = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    result = trainer.lr_find(_loader(), start_lr=1e-4, end_lr=1e4, steps=9)
    assert result.lrs == pytest.approx([1e-4 * 10**i for i in range(len(result.lrs))])
    assert len(result.lrs) < 9  # rates up to 1e4 make the loss explode: the sweep stops early
    for lrs, lr in zip(seen, result.lrs):
        assert lrs == pytest.approx([lr * r for r in ratios])  # layer_decay's ratios hold at every step
    assert result.suggestion in result.lrs


def test_suggestion_is_where_the_loss_has_made_nine_tenths_of_its_fall() -> None:
    lrs = [10.0**e for e in range(-5, 2)]
    losses = [2.0, 1.9, 1.4, 0.8, 0.5, 0.45, 3.0]  # falls 1.55 by 1e0; 90 % of it (1.395) by 1e-1
    assert _suggest(lrs, losses) == pytest.approx(1e-1)
    losses = [2.0, 1.9, 0.6, 0.55, 0.5, 0.45, 3.0]  # 0.6 is 1.4 below the start: 90 % by 1e-3
    assert _suggest(lrs, losses) == pytest.approx(1e-3)
    assert _suggest([1e-3, 1e-2, 1e-1], [0.5, 1.0, 4.0]) == 1e-3  # never fell: the first rate


def test_the_curve_averages_the_losses_of_nearby_rates_on_both_sides() -> None:
    lrs = [10 ** (e / 4) for e in range(-12, -1)]  # four steps per decade: two steps are half a decade
    raw = [float(i) for i in range(len(lrs))]
    assert _smooth(lrs, raw) == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 8.5, 9.0])


def test_bad_arguments_are_named(one_torch_thread) -> None:
    trainer = _trainer()
    with pytest.raises(ValueError, match="0 < start_lr < end_lr"):
        trainer.lr_find(_loader(), start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ValueError, match="steps >= 3"):
        trainer.lr_find(_loader(), steps=2)
    with pytest.raises(ValueError, match="lr_find"):
        trainer.lr_find(DataLoader(TensorDataset(torch.empty(0, 3, 32, 32), torch.empty(0).long())))


def test_plot_draws_the_curve_and_the_suggestion(tmp_path: Path) -> None:
    result = LRFindResult(1e-3, [1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0])
    fig = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 1000
    line, marker = fig.axes[0].lines
    assert list(line.get_xdata()) == [1e-4, 1e-3, 1e-2] and marker.get_xdata()[0] == 1e-3


def test_cli_lr_find_prints_a_suggestion_and_writes_the_plot(
    tmp_path: Path, capsys, one_torch_thread
) -> None:
    data = make_shapes_folder(tmp_path / "shapes", num_classes=2, per_class={"train": 4}, image_size=32)
    plot = tmp_path / "lr.png"
    args = ["lr-find", "--data", str(data), "--backbone", "resnet18", "--pretrained", "false"]
    args += [
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--plot",
        str(plot),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    suggestion = float(out.split("suggested learning rate: ")[1].split()[0])
    assert 1e-6 <= suggestion <= 1.0 and math.isfinite(suggestion)
    assert "9 of 9 backbone blocks train" in out and plot.is_file()
