"""Resuming from checkpoints that cannot be resumed: damaged, not a checkpoint, or another model's.

Each is a short `CheckpointError` naming the file and what to do; the file stays byte for byte as it was,
the model keeps its weights, and no message ever advises ``weights_only=False``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import CheckpointError, Trainer, build_model


class _RunsCode:
    def __reduce__(self):  # unpickling this calls print(): a stand-in for any code
        return (print, ("code from the checkpoint ran",))


def _model(backbone: str = "mobilenet_v3_small", num_classes: int = 3):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=num_classes, pretrained=False)
    model.freeze()
    return model


def _train() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))), batch_size=4)


def _write_real_checkpoint(folder: Path, backbone: str = "mobilenet_v3_small", num_classes: int = 3) -> bytes:
    Trainer(_model(backbone, num_classes), epochs=1, checkpoint_dir=folder, progress=False).fit(_train())
    return (folder / "last.pt").read_bytes()


def _resume_fails(folder: Path, model) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, epochs=2, checkpoint_dir=folder, resume=True, progress=False)
    with pytest.raises(CheckpointError) as info:
        trainer.fit(_train())
    message = str(info.value)
    assert str(folder / "last.pt") in message
    assert "weights_only" not in message  # torch advises turning it off, which would run the code
    assert len(message) < 700, message
    assert "move it away" in message  # what to do
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed resume changed the model"
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]
    return message


def _damaged(good: bytes) -> dict[str, bytes]:
    return {
        "truncated": good[: len(good) // 2],
        "random bytes": bytes(range(256)) * 64,
        "text": b"not a checkpoint",  # read by the unpickler as unknown opcodes
        "empty": b"",
        "pickle with code": pickle.dumps({"model": _RunsCode()}, protocol=2),
    }


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "text", "empty", "pickle with code"])
def test_damaged_checkpoint_is_a_short_error_and_the_file_is_kept(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write_real_checkpoint(tmp_path / "real")
    folder = tmp_path / "run"
    folder.mkdir()
    bad = _damaged(good)[kind]
    (folder / "last.pt").write_bytes(bad)
    message = _resume_fails(folder, _model())
    expected = "holds objects other than tensors" if kind == "pickle with code" else "truncated or damaged"
    assert expected in message
    assert (folder / "last.pt").read_bytes() == bad
    assert "code from the checkpoint ran" not in capsys.readouterr().out


def test_a_file_that_is_not_a_trainer_checkpoint_says_so(tmp_path: Path) -> None:
    torch.save(_model().state_dict(), tmp_path / "last.pt")  # weights only, not a Trainer checkpoint
    message = _resume_fails(tmp_path, _model())
    assert "not a transferkit Trainer checkpoint" in message


def test_checkpoint_of_another_model_names_what_it_was_written_for(tmp_path: Path) -> None:
    good = _write_real_checkpoint(tmp_path, backbone="resnet18")
    message = _resume_fails(tmp_path, _model("mobilenet_v3_small"))
    assert "another model" in message and "'torchvision/resnet18'" in message
    assert "'torchvision/mobilenet_v3_small'" in message
    assert (tmp_path / "last.pt").read_bytes() == good


def test_checkpoint_with_another_class_count_is_refused(tmp_path: Path) -> None:
    _write_real_checkpoint(tmp_path, num_classes=3)
    message = _resume_fails(tmp_path, _model(num_classes=5))
    assert "num_classes=3" in message and "num_classes=5" in message and "other shapes" in message


def test_checkpoint_with_another_optimizer_layout_is_refused(tmp_path: Path) -> None:
    _write_real_checkpoint(tmp_path)

    def one_group(groups):
        return torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.1)

    trainer = Trainer(
        _model(), epochs=2, optimizer=one_group, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    with pytest.raises(CheckpointError, match="parameter groups"):
        trainer.fit(_train())


def test_checkpoint_of_a_run_with_another_recipe_is_refused(tmp_path: Path) -> None:
    _write_real_checkpoint(tmp_path)  # recipe "auto", planned as a plain fine-tune (no pretrained weights)
    model, resuming = _model(), {"epochs": 2, "checkpoint_dir": tmp_path, "resume": True, "progress": False}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, recipe="lp_ft", **resuming)
    with pytest.raises(CheckpointError, match="recipe='finetune', and this Trainer has recipe='lp_ft'"):
        trainer.fit(_train())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    named = Trainer(_model(), recipe="finetune", **resuming)
    assert [row["epoch"] for row in named.fit(_train())] == [0, 1]  # the plan it ran, named: it resumes


def test_checkpoint_written_before_callbacks_had_state_still_resumes(tmp_path: Path) -> None:
    class Counter:
        def __init__(self) -> None:
            self.batches = 0

        def on_batch_end(self, trainer: Trainer) -> None:
            self.batches += 1

        def state_dict(self) -> dict[str, int]:
            return {"batches": self.batches}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.batches = state["batches"]

    Trainer(_model(), epochs=1, checkpoint_dir=tmp_path, progress=False).fit(_train())
    old = torch.load(tmp_path / "last.pt", weights_only=True)
    steps = old["global_step"]
    del old["global_step"], old["callbacks"]  # what a checkpoint held before callbacks had state
    torch.save(old, tmp_path / "last.pt")
    counter = Counter()
    trainer = Trainer(
        _model(), epochs=2, checkpoint_dir=tmp_path, resume=True, progress=False, callbacks=[counter]
    )
    with pytest.warns(UserWarning, match=r"no matching state .* Counter \(callback 1\) starts afresh"):
        history = trainer.fit(_train())
    assert len(history) == 2
    assert trainer.global_step == 2 * steps  # counted on from the scheduler's steps
    assert counter.batches == steps  # the batches of the resumed epoch only
