"""What ``transferkit train`` may write and delete in ``--out``: only its own files, one run at a time.

``--overwrite`` deletes only the entries a run writes, and refuses (deleting nothing) a folder that is
not a run or holds anything else; a run folder is locked while a run writes it; no entry a run writes
is ever written through a symbolic link; and a rejected argument, or a new run that fails in its first
epoch, leaves nothing in ``--out`` that would refuse the corrected command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from cli_runner import run

from transferkit import __version__
from transferkit.data import make_shapes_folder
from transferkit.training import TensorBoard
from transferkit.training.callbacks import write_history_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOCK = ".transferkit.lock"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_folder(
        tmp_path_factory.mktemp("data") / "shapes",
        num_classes=2,
        per_class={"train": 4, "val": 2},
        image_size=32,
    )


def _train(data: Path, out: Path, *extra: object) -> list[object]:
    return [
        "train", "--data", data, "--backbone", "resnet18", "--pretrained", "false", "--freeze", "all",
        "--epochs", 1, "--batch-size", 4, "--image-size", 32, "--device", "cpu", "--out", out, *extra,
    ]  # fmt: skip


def _meta(data: Path, status: str = "done") -> dict[str, Any]:
    """What ``_train(data, ...)`` writes to transferkit.json."""
    return {
        "task": "classification", "classes": ["circle", "square"], "data": str(data), "backbone": "resnet18",
        "neck": "identity", "head": "linear", "pretrained": False, "freeze": "all", "epochs": 1, "lr": None,
        "batch_size": 4, "image_size": 32, "seed": 0, "augment": "light", "flip": None, "crop_scale": None,
        "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0, "log": "csv", "transferkit_version": __version__,
        "status": status,
    }  # fmt: skip


def _contents(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` but the lock: file bytes, link targets (as text) and folders (None)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(p for p in folder.rglob("*") if p.name != LOCK):
        name = str(path.relative_to(folder))
        found[name] = (
            os.readlink(path).encode()
            if path.is_symlink()
            else (path.read_bytes() if path.is_file() else None)
        )
    return found


# ----------------------------------------------------------------------------------- --overwrite
def test_overwrite_refuses_a_model_folder_that_is_not_a_run_and_deletes_nothing(
    data: Path, tmp_path: Path
) -> None:
    """A Hugging Face model folder (config.json + model.safetensors + tokenizer + notes) is not a run."""
    folder = tmp_path / "hf-model"
    folder.mkdir()
    for name, content in {
        "config.json": b'{"model_type": "vit"}', "model.safetensors": b"weights", "tokenizer.json": b"{}",
        "notes.md": b"precious",
    }.items():  # fmt: skip
        (folder / name).write_bytes(content)
    before = _contents(folder)
    result = run(*_train(data, folder, "--overwrite"))
    assert result.code == 1
    assert "it has no transferkit.json" in result.err and "Nothing was deleted" in result.err, result.err
    assert _contents(folder) == before


def test_overwrite_names_what_no_run_writes_then_replaces_what_kill_9_left(
    data: Path, tmp_path: Path
) -> None:
    """A run killed mid-write (a stale temp file, its lock file) plus files of the user's own."""
    folder = tmp_path / "run"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "transferkit.json").write_text(json.dumps(_meta(data, status="training")))
    (folder / "checkpoint" / "last.pt").write_bytes(b"state of the old run")
    (folder / ".transferkit.json.0123abcd.tmp").write_text("{")
    (folder / LOCK).write_text(f"pid 999999 on {os.uname().nodename}: transferkit train\n")
    (folder / "notes.txt").write_text("precious")
    (folder / "checkpoint" / "mine.pt").write_bytes(b"mine")
    (folder / "history.csv").symlink_to(tmp_path / "elsewhere.csv")
    before = _contents(folder)
    result = run(*_train(data, folder, "--overwrite"))
    assert result.code == 1
    assert "checkpoint/mine.pt, history.csv (a symbolic link), notes.txt, which no run writes" in result.err
    assert _contents(folder) == before

    for name in ("notes.txt", "checkpoint/mine.pt", "history.csv"):
        (folder / name).unlink()
    result = run(*_train(data, folder, "--overwrite"))
    assert result.code == 0, result.err
    assert json.loads((folder / "transferkit.json").read_text())["status"] == "done"
    written = {"config.json", "model.safetensors", "transferkit.json", "history.json", "history.csv"}
    plots = {"history.png", "predictions.png", "confusion.png", "report.html"}
    assert written <= {p.name for p in folder.iterdir()} <= written | plots  # the old checkpoint is gone


# ------------------------------------------------------------------------------------------ lock
def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_first(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [str(a) for a in _train(data, out)]
    argv[argv.index("--epochs") + 1] = "1000"
    first = subprocess.Popen(
        [sys.executable, "-m", "transferkit.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "history.csv").is_file():  # the first epoch is done: the run is well under way
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run wrote no history"
            time.sleep(0.05)
        for second in (_train(data, out, "--overwrite"), ["train", "--resume", "--out", out]):
            result = run(*second)
            assert result.code == 1, result
            assert f"--out {out} is in use by another transferkit command (pid {first.pid} " in result.err
            assert "nothing to delete" in result.err
        assert first.poll() is None, "the second command stopped the first"
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
        first.wait()
    # the system released the killed run's lock: the folder is free, though its lock file is still there
    assert (out / LOCK).exists()
    result = run(*_train(data, out, "--overwrite"))
    assert result.code == 0, result.err
    assert not (out / LOCK).exists()


HOLDER = """
import os, sys, time
from pathlib import Path
from transferkit.cli.lock import locked_run_folder
with locked_run_folder(Path(sys.argv[1]), command="a test"):
    child = os.fork()  # as a DataLoader worker is forked
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    time.sleep(120)
"""


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_command(tmp_path: Path) -> None:
    from transferkit.cli.lock import RunFolderInUse, locked_run_folder

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    child = 0
    try:
        child = int(holder.stdout.readline())  # type: ignore[union-attr]
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid} .*: a test"):
            with locked_run_folder(tmp_path, command="the test"):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child still runs ...
        with locked_run_folder(tmp_path, command="the test"):  # ... and the folder is free
            assert (tmp_path / LOCK).read_text().startswith(f"pid {os.getpid()} ")
    finally:
        holder.kill()
        holder.wait()
        if child:
            os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------------ symbolic links
PLANTED = ["transferkit.json", "history.csv", "checkpoint", "checkpoint/last.pt"]


@pytest.mark.parametrize("entry", PLANTED)
def test_resume_refuses_an_entry_that_is_a_symbolic_link(data: Path, tmp_path: Path, entry: str) -> None:
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (out / "checkpoint").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "transferkit.json").write_text(json.dumps(_meta(data, status="training")))
    victim = elsewhere / Path(entry).name
    if entry == "checkpoint":
        (out / "checkpoint").rmdir()
        victim.mkdir()
    else:
        victim.write_bytes((out / entry).read_bytes() if (out / entry).exists() else b"precious")
        (out / entry).unlink(missing_ok=True)
    (out / entry).symlink_to(victim)
    before = _contents(elsewhere)
    result = run("train", "--resume", "--out", out)
    assert result.code == 1, result
    assert f"{out / entry}: it is a symbolic link (to {victim})" in result.err, result.err
    assert _contents(elsewhere) == before
    assert (out / entry).is_symlink()


def test_history_csv_is_never_written_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.csv"
    victim.write_text("precious")
    (tmp_path / "history.csv.tmp").symlink_to(victim)  # the fixed temp name an earlier version used
    rows = [{"epoch": 0, "train_loss": 0.5}]
    write_history_csv(rows, tmp_path / "history.csv")
    assert victim.read_text() == "precious"
    (tmp_path / "linked.csv").symlink_to(victim)
    with pytest.raises(FileExistsError, match="linked.csv: it is a symbolic link"):
        write_history_csv(rows, tmp_path / "linked.csv")
    assert victim.read_text() == "precious"


def test_tensorboard_never_writes_into_a_linked_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    writer = SimpleNamespace(add_scalar=lambda *a: None, flush=lambda: None, close=lambda: None)
    fake = ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda log_dir: opened.append(log_dir) or writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tb").symlink_to(tmp_path / "elsewhere")
    trainer = SimpleNamespace(is_main=True, global_step=1, history=[{"epoch": 0, "train_loss": 0.5}])
    with pytest.raises(FileExistsError, match="tb: it is a symbolic link"):
        TensorBoard(tmp_path / "tb").on_epoch_end(trainer)
    assert opened == []
    TensorBoard(tmp_path / "elsewhere").on_epoch_end(trainer)
    assert opened == [str(tmp_path / "elsewhere")]


# ------------------------------------------------------------------------------ failed new runs
def test_a_rejected_argument_leaves_nothing_that_refuses_the_corrected_command(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "run"
    for option, value, code in (("--label-smoothing", "5", 1), ("--lr", "inf", 2), ("--lr", "nan", 2)):
        result = run(*_train(data, out, option, value))
        assert result.code == code, result
        assert option.lstrip("-").replace("-", "_") in result.err.replace("-", "_")
        assert not out.parent.exists(), sorted(p.name for p in out.iterdir())
    out.mkdir(parents=True)
    result = run(*_train(data, out, "--label-smoothing", "5"))
    assert result.code == 1 and out.is_dir() and not any(out.iterdir())  # an existing folder stays
    corrected = run(*_train(data, out, "--label-smoothing", "0.1"))
    assert corrected.code == 0, corrected.err


def test_a_new_run_that_fails_in_its_first_epoch_leaves_no_run_behind(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    for path in data.rglob("*.jpg"):
        (broken / path.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
        (broken / path.relative_to(data)).write_bytes(path.read_bytes())
    (broken / "train" / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    result = run(*_train(broken, out))
    assert result.code == 1 and "broken.jpg" in result.err, result
    assert not out.exists()
    again = run("train", "--resume", "--out", out)
    assert again.code == 1 and "holds no run" in again.err
