"""Every script in examples/ runs, on tiny generated data, and does what its docstring says.

The scripts default to real use (ImageNet weights, a data folder); the tests pass the small settings the
scripts offer (``--synthetic --epochs 1 --image-size 32 --workers 0``). ``pretrained=True`` stays the
default in most runs and loads the fake cached weights of tests/test_docs.py's `offline_weights`
fixture through the real code path. The in-process examples are imported and their ``main(argv)``
called, which saves the interpreter start-up and lets the tests check the returned history;
``train_ddp.py`` is launched for real with ``torch.distributed.run`` on two CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from transferkit import load_model

sys.path.insert(0, str(Path(__file__).parent))
import test_docs  # noqa: E402  (the offline-weights fixtures and the example loader live there)

EXAMPLES, load_example = test_docs.EXAMPLES, test_docs.load_example
weights_home, offline_weights, one_thread = (
    test_docs.weights_home,
    test_docs.offline_weights,
    test_docs.one_thread,
)

SMALL = ["--synthetic", "--image-size", "32", "--workers", "0", "--batch-size", "16"]
TESTED = {
    "classify_folder.py",
    "segment_fcn.py",
    "detect_folder.py",
    "gradual_unfreeze.py",
    "two_phase_finetune.py",
    "train_ddp.py",
}


def test_every_example_is_tested_here() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


@pytest.mark.parametrize("name", sorted(TESTED))
def test_help_describes_real_use_defaults(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` works, and without flags a script means real use: ImageNet weights and a data folder."""
    example = load_example(name)
    with pytest.raises(SystemExit) as exit:
        example.parse_args(["--help"])
    assert exit.value.code == 0 and "--synthetic" in capsys.readouterr().out
    defaults = example.parse_args([])
    assert defaults.pretrained is True and not defaults.synthetic and defaults.data.name.endswith("_data")


def test_classify_folder(tmp_path: Path, offline_weights: Path) -> None:
    import torchvision.models as tvm

    result = load_example("classify_folder.py").main(
        [*SMALL, "--epochs", "2", "--out", str(tmp_path / "run")]
    )
    history = result["history"]
    assert [row["epoch"] for row in history] == [0, 1]
    saved = {p.name for p in (tmp_path / "run").iterdir()}
    assert saved >= {"config.json", "model.safetensors", "history.json"}
    assert load_model(tmp_path / "run").classes == result["classes"] == ["circle", "square"]
    # The saved model is the best epoch's (restore_best), as its reloaded val accuracy shows.
    best = min(history, key=lambda row: row["val_loss"])
    assert result["metrics"]["acc"] == pytest.approx(best["val_acc"])
    # pretrained=True loaded the cached weights, and the frozen blocks (last_n:4) still hold them.
    url = tvm.get_model_weights("resnet18").DEFAULT.url
    cached = torch.load(offline_weights / "torch/hub/checkpoints" / os.path.basename(url), weights_only=True)
    model = load_model(tmp_path / "run")
    assert model.trainable_blocks == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert torch.equal(
        model.get_submodule("backbone.body.layer1.0.conv1").weight, cached["layer1.0.conv1.weight"]
    )
    assert torch.equal(
        model.get_submodule("backbone.body.layer2.1.bn2").running_mean, cached["layer2.1.bn2.running_mean"]
    )
    assert not torch.equal(
        model.get_submodule("backbone.body.layer4.1.conv2").weight, cached["layer4.1.conv2.weight"]
    )


def test_classify_folder_rejects_a_bad_freeze(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_example("classify_folder.py").parse_args(["--freeze", "last_n"])
    assert "last_n:K" in capsys.readouterr().err


def test_detect_folder(tmp_path: Path, offline_weights: Path) -> None:
    out = tmp_path / "boxes"
    argv = [*SMALL, "--image-size", "64", "--epochs", "1", "--draw", "2", "--out", str(out)]  # fmt: skip
    result = load_example("detect_folder.py").main([*argv, "--format", "voc"])
    assert 0.0 <= result["history"][0]["val_map_50"] <= 1.0 and set(result["metrics"]) == {"map", "map_50"}
    assert result["picture"].read_bytes().startswith(b"\x89PNG")
    model = load_model(out)
    assert model.task == "detection" and model.classes == ["circle", "square", "triangle"]
    assert model.freeze_state()["bn"] == "frozen_all"  # pretrained=True (the cached fake weights)


def test_segment_fcn(tmp_path: Path, offline_weights: Path) -> None:
    out = tmp_path / "seg"
    result = load_example("segment_fcn.py").main(
        [*SMALL, "--epochs", "1", "--save-masks", "3", "--out", str(out)]
    )
    assert 0.0 <= result["history"][0]["val_miou"] <= 1.0
    assert set(result["metrics"]) == {"loss", "miou", "acc"}
    assert [p.name for p in result["masks"]] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    with Image.open(result["masks"][0]) as mask:
        assert mask.mode == "P" and mask.size == (32, 32)
        assert mask.getextrema()[1] < 4  # background and the three shape kinds
    model = load_model(out)
    assert model.task == "segmentation" and model.num_classes == 4


def test_gradual_unfreeze(tmp_path: Path) -> None:
    argv = [
        *SMALL,
        "--pretrained",
        "false",
        "--epochs",
        "3",
        "--n",
        "1",
        "--step",
        "2",
        "--out",
        str(tmp_path),
    ]
    result = load_example("gradual_unfreeze.py").main(argv)
    assert [row["trainable_blocks"] for row in result["history"]] == [1, 3, 5]
    assert load_model(tmp_path).freeze_state()["policy"] == "gradual"


def test_two_phase_finetune(tmp_path: Path, offline_weights: Path) -> None:
    argv = [*SMALL, "--head-epochs", "2", "--finetune-epochs", "2", "--unfreeze", "3", "--out", str(tmp_path)]
    argv.append("--cache-features")  # phase 1 trains the head on cached backbone features
    result = load_example("two_phase_finetune.py").main(argv)
    assert [row["trainable_blocks"] for row in result["head"]] == [0, 0]
    assert [row["trainable_blocks"] for row in result["finetune"]] == [3, 3]
    assert result["finetune"][0]["lr"] == pytest.approx(1e-4)  # phase 2 runs at the lower rate
    assert load_model(tmp_path).trainable_blocks == ["layer3.1", "layer4.0", "layer4.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_train_ddp_under_torchrun(tmp_path: Path, weights_home: Path) -> None:
    out, logs = tmp_path / "run", tmp_path / "logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", f"--log-dir={logs}", "--redirects=3",
        str(EXAMPLES / "train_ddp.py"), *SMALL, "--epochs", "1", "--out", str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TORCH_HOME=str(weights_home / "torch"))  # pretrained=True, offline
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    stdout = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    stderr = "\n".join(p.read_text() for p in logs.rglob("stderr.log"))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stderr}"
    assert "2 process(es)" in stdout[0] and stdout[1] == ""  # only rank 0 prints and writes
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and 0.0 <= history[0]["val_acc"] <= 1.0
    assert load_model(out).num_classes == 2
