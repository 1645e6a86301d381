"""Run folders across commands: class names that travel, Ctrl-C and --resume, refusing to overwrite.

The SIGINT test runs ``python -m transferkit.cli train`` in a subprocess on one thread and interrupts it
once the first checkpoint exists; the reference and the resumed runs are in-process on one thread too,
so all three compute with the same kernels and the weights can be compared bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import Result, run
from safetensors import safe_open

from transferkit import Trainer, build_model, load_model
from transferkit.cli.folder import remove_entries
from transferkit.cli.resume import check_new_run
from transferkit.data import image_folder_loaders, make_shapes_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def insects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ants/bees layout in miniature: train/{ants,bees}/*.jpg (4 each), val/ (2 each), 32 px."""
    root = make_shapes_folder(
        tmp_path_factory.mktemp("insects") / "hymenoptera_data",
        num_classes=2,
        per_class={"train": 4, "val": 2},
        image_size=32,
    )
    for split in ("train", "val"):
        for shape, insect in (("circle", "ants"), ("square", "bees")):
            (root / split / shape).rename(root / split / insect)
    return root


def _train_args(data: Path) -> list[object]:
    return [
        "train", "--data", data, "--backbone", "resnet18", "--pretrained", "false", "--freeze", "all",
        "--epochs", 4, "--batch-size", 4, "--image-size", 32, "--seed", 3, "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(insects: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One uninterrupted 4-epoch CLI run (the SIGINT test interrupts after the first: 3 are left)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run(*_train_args(insects), "--out", out)
    assert result.code == 0, result.err
    return out, result


# ------------------------------------------------------------------------------- class names travel


def test_readme_quick_start_then_eval_and_predict_by_name(insects: Path, tmp_path: Path) -> None:
    """The README's quick start (pretrained=False), then the CLI on its folder: names, not indices."""
    model = build_model("resnet18", neck="identity", head="linear", num_classes=2, pretrained=False)
    model.freeze(policy="last_n", n=4)
    loaders = image_folder_loaders(insects, model=model, batch_size=32, image_size=32)
    Trainer(model, epochs=1, lr=1e-3, progress=False).fit(loaders)
    assert model.classes == ["ants", "bees"]  # from the data, by the Trainer
    out = tmp_path / "ants_bees"
    model.save(out)

    evaluated = run("eval", "--model", out, "--data", insects)
    assert evaluated.code == 0, evaluated.err
    assert "4 images, 2 classes" in evaluated.out
    predicted = run("predict", "--model", out, insects / "val" / "bees", "--top-k", 2)
    assert predicted.code == 0, predicted.err
    lines = predicted.out.strip().splitlines()
    assert len(lines) == 2
    assert all(re.search(r"\.jpg: (ants|bees) \d\.\d{3}  (ants|bees) \d\.\d{3}$", line) for line in lines)

    image = next((insects / "val" / "ants").iterdir())
    answer = load_model(out).predict(str(image))
    assert [name for name, _ in answer] in (["ants", "bees"], ["bees", "ants"])
    assert sum(p for _, p in answer) == pytest.approx(1.0)


def test_predict_reports_an_unreadable_file_and_predicts_the_rest(
    reference: tuple[Path, Result], insects: Path, tmp_path: Path
) -> None:
    good = next((insects / "val" / "bees").iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = run("predict", "--model", reference[0], broken, good)
    assert result.code == 1, result.err  # the good file is predicted; the skip shows in the exit status
    assert result.out.strip().startswith(f"{good}: ")
    assert len(result.out.strip().splitlines()) == 1
    assert re.search(rf"skipped {re.escape(str(broken))}: cannot read image", result.err)


# ---------------------------------------------------------------------------------------- epochs


def test_epochs_count_from_one_in_cli_text_and_transferkit_json(reference: tuple[Path, Result]) -> None:
    out, result = reference
    meta = json.loads((out / "transferkit.json").read_text())
    kept = int(re.search(r"kept the weights of epoch (\d+)", result.out).group(1))
    assert meta["best_epoch"] == kept and 1 <= kept <= 4
    assert meta["status"] == "done" and meta["classes"] == ["ants", "bees"]
    history = json.loads((out / "history.json").read_text())
    best = min(history, key=lambda row: row["val_loss"])
    assert best["epoch"] + 1 == kept  # history.json keeps the Trainer's 0-based index
    table = [int(line.split()[0]) for line in result.out.splitlines() if re.match(r"^\s+\d+\s+\d+/9", line)]
    assert table == [1, 2, 3, 4]
    assert not (out / "checkpoint").exists()  # a finished run keeps no optimizer state


# ------------------------------------------------------------------------------ interrupt and resume


def _saved(folder: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """A run's ``model.safetensors`` as metadata and tensor bytes (the header's key order may vary)."""
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def test_sigint_leaves_a_run_that_resume_finishes_bit_identically(
    reference: tuple[Path, Result], insects: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "transferkit.cli", *map(str, _train_args(insects)), "--out", str(out)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "last.pt").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, f"the run ended before the signal, or failed: {stderr}"
    assert f"transferkit train --resume --out {out}" in stderr and "Traceback" not in stderr
    assert not (out / "model.safetensors").exists()

    # an in-progress run is not a model yet, and says how to finish it
    unfinished = run("eval", "--model", out, "--data", insects)
    assert unfinished.code == 1 and "--resume" in unfinished.err

    resumed = run("train", "--resume", "--out", out)  # the options come from the run folder
    assert resumed.code == 0, resumed.err
    assert "resuming" in resumed.out
    assert _saved(out) == _saved(reference[0])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    history = json.loads((out / "history.json").read_text())
    assert strip(history) == strip(json.loads((reference[0] / "history.json").read_text()))

    again = run("train", "--resume", "--out", out)
    assert again.code == 0 and "nothing to resume" in again.out


def test_a_second_train_into_a_run_folder_is_refused(reference: tuple[Path, Result], insects: Path) -> None:
    out = reference[0]
    before = (out / "model.safetensors").read_bytes()
    refused = run(*_train_args(insects), "--out", out)
    assert refused.code == 1
    assert "--resume" in refused.err and "--overwrite" in refused.err
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_refuses_changed_options(reference: tuple[Path, Result]) -> None:
    result = run("train", "--resume", "--out", reference[0], "--epochs", 5, "--seed", 3)
    assert result.code == 2
    assert "--epochs 5 (the run has 4)" in result.err and "--seed" not in result.err.split("but")[1]


def test_resume_needs_a_run_and_a_new_run_needs_data(tmp_path: Path) -> None:
    missing = run("train", "--resume", "--out", tmp_path / "nothing")
    assert missing.code == 1 and "holds no run started by transferkit train" in missing.err
    no_data = run("train", "--backbone", "resnet18", "--out", tmp_path / "new")
    assert no_data.code == 2 and "--data" in no_data.err


def test_overwrite_replaces_only_a_run_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="replaces only a run folder that transferkit train wrote"):
        check_new_run(mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"

    old = tmp_path / "old"
    old.mkdir()
    (old / "transferkit.json").write_text('{"status": "done", "transferkit_version": "0.1.0"}')
    (old / "checkpoint").mkdir()
    (old / "checkpoint" / "last.pt").write_bytes(b"state")
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        check_new_run(old, overwrite=False)
    remove_entries(check_new_run(old, overwrite=True))
    assert old.is_dir() and not any(old.iterdir())
    assert check_new_run(tmp_path / "fresh", overwrite=False) == []  # nothing there: nothing to say
