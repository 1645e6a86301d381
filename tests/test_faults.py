"""Faults while training: kill -9 at chosen and random moments, then resume; a full disk mid-checkpoint.

Each run is a child process of the zygote in tests/fault_train_script.py (a fork of an interpreter that
has imported transferkit, so a run starts in milliseconds instead of seconds). A kill is a real SIGKILL:
no handler, no cleanup. What must hold after every kill, and at the end of the resumed run:

- ``last.pt`` is absent or a whole checkpoint (never half of one); a stale ``last.pt.tmp`` may be left;
- resuming in a new process ends bit-identical to a run that was never interrupted (weights, history);
- no ``*.tmp`` is left once the resumed run finishes.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "fault_train_script.py"
WAIT_S = 120  # the longest a child may take to reach its pause point on a busy runner
RANDOM_KILLS = 4


class Zygote:
    """Drives tests/fault_train_script.py: fork runs, kill them, wait for them."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the zygote died (exit {self.process.poll()})"
        return json.loads(line)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def start(self, signals: Path, **spec: Any) -> int:
        signals.mkdir(parents=True, exist_ok=True)
        for stale in ("paused", "started", "result.pt", "exit"):
            (signals / stale).unlink(missing_ok=True)
        return self._ask({"run": {"signals": str(signals), **spec}})["pid"]

    def wait(self, pid: int) -> dict[str, Any]:
        return self._ask({"wait": pid})

    def run(self, signals: Path, **spec: Any) -> None:
        """Run to the end; fail with the child's log if it did not exit 0."""
        status = self.wait(self.start(signals, **spec))
        assert status == {"exit": 0, "signal": None}, f"{status}\n{_log(signals)}"

    def kill_when(self, signals: Path, marker: str, delay: float = 0.0, **spec: Any) -> None:
        """Start a run, wait until it writes ``signals/marker``, sleep ``delay``, then SIGKILL it."""
        pid = self.start(signals, **spec)
        deadline = time.monotonic() + WAIT_S
        while not (signals / marker).exists():
            if time.monotonic() > deadline or _exited(pid):
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the run never reached {marker}: {self.wait(pid)}\n{_log(signals)}")
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        status = self.wait(pid)
        assert status["signal"] == signal.SIGKILL or status["exit"] == 0, status  # 0: done before the kill

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=30)


def _exited(pid: int) -> bool:
    """Whether the child is a zombie (finished, not yet reaped by the zygote)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def _log(signals: Path) -> str:
    log = signals / "log.txt"
    return log.read_text()[-3000:] if log.exists() else "(no log)"


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork (POSIX)")
    handle = Zygote()
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def reference(zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: its final weights and history, and its state after each epoch."""
    folder = tmp_path_factory.mktemp("reference")
    zygote.run(folder / "signals", checkpoint_dir=str(folder / "ckpt"), record=True)
    result = torch.load(folder / "signals" / "result.pt", weights_only=True)
    epochs = sorted(folder.glob("signals/epoch*.pt"))
    return {**result, "epochs": [torch.load(path, weights_only=True) for path in epochs]}


def _checkpoint_epoch(folder: Path) -> int | None:
    """The epoch of ``folder/last.pt`` (None when absent); loading it proves it is whole."""
    path = folder / "last.pt"
    return torch.load(path, weights_only=True)["epoch"] if path.exists() else None


def _assert_same_tensors(state: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    flat, want = _flatten(state), _flatten(expected)
    assert flat.keys() == want.keys(), what
    different = [k for k in flat if not torch.equal(flat[k], want[k])]
    assert not different, f"{what} differs from the uninterrupted run's in {different[:5]}"


def _flatten(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors in nested dicts and lists (a state_dict, an optimizer's state), by path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return {k: v for key, item in items for k, v in _flatten(item, f"{prefix}/{key}").items()}


def _assert_same_run(result: dict[str, Any], reference: dict[str, Any]) -> None:
    assert result["history"] == reference["history"]
    _assert_same_tensors(result["state"], reference["state"], "the resumed run's final model")


# (pause point, what the checkpoint folder holds after the kill: last.pt's epoch, whether a .tmp is left)
KILL_POINTS = [
    (["batch", 0, 1], None, False),  # mid-epoch, before any checkpoint
    (["partial_write", 0], None, True),  # inside the first checkpoint write: half a temp file
    (["epoch_end", 0], 0, False),  # between epochs (the stale half temp file was replaced)
    (["batch", 1, 2], 0, False),  # mid-epoch
    (["before_rename", 1], 0, True),  # inside the write: whole temp file, not renamed
    (["after_rename", 2], 2, False),  # inside the write: renamed, directory not yet fsynced
]


def test_kill_9_anywhere_then_resume_is_bit_identical(
    zygote: Zygote, reference: dict[str, Any], tmp_path: Path
) -> None:
    """One run killed at each point in turn, every run resuming the last one's checkpoint folder."""
    ckpt, signals = tmp_path / "ckpt", tmp_path / "signals"
    for pause, epoch, tmp_left in KILL_POINTS:
        zygote.kill_when(signals, "paused", checkpoint_dir=str(ckpt), pause=pause)
        assert _checkpoint_epoch(ckpt) == epoch, pause
        assert (ckpt / "last.pt.tmp").exists() == tmp_left, pause
    zygote.run(signals, checkpoint_dir=str(ckpt))
    _assert_same_run(torch.load(signals / "result.pt", weights_only=True), reference)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"], "a temp file was left behind"


def test_kill_9_at_random_moments_then_resume_is_bit_identical(
    zygote: Zygote, reference: dict[str, Any], tmp_path: Path
) -> None:
    """Killed a few times at random moments (drawn from a fixed seed): in a step, a write, a resume."""
    ckpt, signals = tmp_path / "ckpt", tmp_path / "signals"
    delays = random.Random(17)
    for _ in range(RANDOM_KILLS):
        delay = delays.uniform(0.0, 0.6)
        zygote.kill_when(signals, "started", delay=delay, checkpoint_dir=str(ckpt), pause=["started"])
        assert not ckpt.exists() or sorted(p.name for p in ckpt.iterdir()) in (
            [], ["last.pt"], ["last.pt", "last.pt.tmp"], ["last.pt.tmp"]
        )  # fmt: skip
        _checkpoint_epoch(ckpt)  # whole, whenever it exists
    zygote.run(signals, checkpoint_dir=str(ckpt))
    _assert_same_run(torch.load(signals / "result.pt", weights_only=True), reference)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"], "a temp file was left behind"


def test_full_disk_during_a_checkpoint_write_is_a_clear_error_and_keeps_the_last_one(
    zygote: Zygote, reference: dict[str, Any], tmp_path: Path
) -> None:
    """A real write failure (RLIMIT_FSIZE, as a full disk) while epoch 1's checkpoint is written."""
    ckpt, signals = tmp_path / "ckpt", tmp_path / "signals"
    zygote.run(signals, checkpoint_dir=str(ckpt), fsize_after=0)
    result = torch.load(signals / "result.pt", weights_only=True)
    assert result["error"] == "OSError" and result["errno"] == errno.EFBIG, result["message"]
    message = result["message"]
    assert str(ckpt / "last.pt") in message and "intact" in message, message
    assert "free disk space" in message and "checkpoint_dir" in message, message
    assert _checkpoint_epoch(ckpt) == 0, "the previous last.pt was damaged"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"], "a temp file was left behind"
    # the training state is epoch 1's, as if the write had worked: only the file is missing
    assert [row["epoch"] for row in result["history"]] == [0, 1]
    _assert_same_tensors(result["state"], reference["epochs"][1]["state"], "the model after the failed write")
    _assert_same_tensors(result["optimizer"], reference["epochs"][1]["optimizer"], "the optimizer after it")
    # with room again, resuming redoes epoch 1 from epoch 0's checkpoint and ends as if nothing happened
    zygote.run(signals, checkpoint_dir=str(ckpt))
    _assert_same_run(torch.load(signals / "result.pt", weights_only=True), reference)


# ------------------------------------------------------------------------------ transferkit train --resume
def _train_options() -> set[str]:
    from transferkit import cli

    commands = next(a for a in cli.build_parser()._actions if isinstance(a.choices, dict))
    return {option for action in commands.choices["train"]._actions for option in action.option_strings}


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def test_kill_9_then_transferkit_train_resume_is_bit_identical(zygote: Zygote, tmp_path: Path) -> None:
    if "--resume" not in _train_options():
        pytest.skip("transferkit train has no --resume yet (issue #11 adds it)")
    from transferkit.data import make_shapes_folder

    data = make_shapes_folder(
        tmp_path / "data", num_classes=2, per_class={"train": 8, "val": 2}, image_size=32
    )
    run = ["train", "--data", str(data), "--backbone", "mobilenet_v3_small", "--pretrained", "false",
           "--freeze", "gradual:0:2", "--epochs", "3", "--lr", "0.05", "--batch-size", "4",
           "--image-size", "32", "--seed", "0", "--device", "cpu"]  # fmt: skip
    reference, out, signals = tmp_path / "reference", tmp_path / "run", tmp_path / "signals"
    zygote.run(signals, argv=[*run, "--out", str(reference)])
    assert (signals / "exit").read_text() == "0", _log(signals)
    resume = ["train", "--resume", "--out", str(out), "--device", "cpu"]
    zygote.kill_when(signals, "paused", argv=[*run, "--out", str(out)], pause=["epoch_end", 0])
    zygote.kill_when(signals, "paused", argv=resume, pause=["before_rename", 1])
    zygote.kill_when(signals, "paused", argv=resume, pause=["batch", 1, 2])
    zygote.kill_when(signals, "paused", argv=resume, pause=["after_rename", 1])
    zygote.run(signals, argv=resume)
    assert (signals / "exit").read_text() == "0", _log(signals)
    _assert_same_tensors(
        _safetensors(out / "model.safetensors"), _safetensors(reference / "model.safetensors"), "the model"
    )
    history, expected = (json.loads((folder / "history.json").read_text()) for folder in (out, reference))
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in history] == [
        {k: v for k, v in row.items() if k != "seconds"} for row in expected
    ]
    assert not list(out.rglob("*.tmp")), "a temp file was left behind"
