"""The one step shared by fit, evaluate, predict and lr_find: lr_find clips and accumulates like fit, the
global step counts optimizer steps, and no pass reaches into the Trainer's private members or branches on
cached batches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model

TRAINING = Path(__file__).parents[1] / "transferkit" / "training"


def _loader(n: int = 24, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)
    x[:, 0] += y[:, None, None].float()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _trainer(**kwargs) -> Trainer:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, pretrained=False)
    model.freeze("last_n", n=1)
    return Trainer(model, epochs=1, lr=1e-3, progress=False, device="cpu", **kwargs)


def test_lr_find_clips_like_fit(one_torch_thread) -> None:
    plain = _trainer().lr_find(_loader(), start_lr=1e-3, end_lr=1.0, steps=5)
    clipped = _trainer(clip_grad_norm=1e-3).lr_find(_loader(), start_lr=1e-3, end_lr=1.0, steps=5)
    assert plain.lrs[:3] == clipped.lrs[:3]
    assert plain.losses[0] == pytest.approx(clipped.losses[0])  # the first loss is before any update
    assert plain.losses[1:3] != pytest.approx(clipped.losses[1:3], rel=1e-6)  # clipped updates differ


def test_lr_find_steps_once_per_grad_accum_batches_and_clips_each_step(one_torch_thread, monkeypatch) -> None:
    trainer = _trainer(grad_accum=3, clip_grad_norm=1.0)
    clips: list[float] = []
    clip = nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *args, **kwargs):
        clips.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", spy_clip)
    steps, forwards = [], []
    step = trainer.optimizer.step

    def spy_step(*args, **kwargs):
        steps.append(len(forwards))  # batches seen when the optimizer steps
        return step(*args, **kwargs)

    trainer.optimizer.step = spy_step
    hook = trainer.model.register_forward_hook(lambda module, args, out: forwards.append(1))
    result = trainer.lr_find(_loader(), start_lr=1e-4, end_lr=1e-2, steps=4)
    hook.remove()
    assert len(result.lrs) == 4
    # each sweep step: 3 batches (the one-sample probe runs only for batches of one sample), one update
    assert steps == [3, 6, 9, 12]
    assert clips == [1.0] * 4


def test_global_step_counts_optimizer_steps_across_epochs(one_torch_thread) -> None:
    seen: list[tuple[int, int, int]] = []

    class Record:
        def on_batch_end(self, trainer: Trainer) -> None:
            seen.append((trainer.epoch, trainer.step, trainer.global_step))

    trainer = _trainer(grad_accum=2, callbacks=[Record()])
    trainer.epochs = 2
    trainer.fit(_loader(n=12, batch_size=4))  # 3 batches: windows of 2 and 1, two steps per epoch
    assert seen == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 2), (1, 1, 3), (1, 2, 4)]
    assert trainer.global_step == 4 == trainer.scheduler.last_epoch


def test_no_pass_uses_private_trainer_members_or_branches_on_cached_batches() -> None:
    for path in TRAINING.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if path.name != "trainer.py" and isinstance(node, ast.Attribute):
                owner = node.value
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not (private and isinstance(owner, ast.Name) and owner.id == "trainer"), (
                    f"{path.name}:{node.lineno} uses trainer.{node.attr}"
                )
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                assert "CachedBatch" not in ast.unparse(node), f"{path.name}:{node.lineno} branches on it"


def test_training_functions_are_short_and_files_under_400_lines() -> None:
    for path in TRAINING.glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) < 400, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                assert length <= 60, f"{path.name}: {node.name} has {length} lines"
