"""Trainer under torchrun: two CPU ranks (gloo) train to identical weights; only rank 0 writes and prints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from transferkit import Trainer, build_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
SCRIPT = Path(__file__).with_name("ddp_fit_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from ddp_fit_script import POLICIES, shapes  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(SCRIPT), str(out),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parent.parent), env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(out.glob("log_rank*.txt")))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{logs}"
    return out


def _results(out: Path, policy: str) -> list[dict]:
    return [torch.load(out / f"result_{policy}_rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_ranks_end_with_identical_weights(ddp_run: Path, policy: str) -> None:
    rank0, rank1 = _results(ddp_run, policy)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["final"].keys() == rank1["final"].keys()
    differ = [k for k in rank0["final"] if not torch.equal(rank0["final"][k], rank1["final"][k])]
    assert not differ, f"ranks disagree on {differ[:5]}"
    # The ranks started from different weights: DDP made rank 0's the common start, and training moved them.
    assert any(not torch.equal(rank0["initial"][k], rank1["initial"][k]) for k in rank0["initial"])
    changed = [k for k in rank0["final"] if not torch.equal(rank0["final"][k], rank0["initial"][k])]
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("backbone.") for k in changed)
    strip = [
        [{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]] for r in (rank0, rank1)
    ]
    assert strip[0] == strip[1]


def test_last_n_keeps_frozen_blocks_and_gradual_unfreezes(ddp_run: Path) -> None:
    rank0, _ = _results(ddp_run, "last_n")
    model = build_model("resnet18", num_classes=3, pretrained=False)
    model.freeze(**POLICIES["last_n"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert frozen and trainable
    assert all(torch.equal(rank0["final"][n], rank0["initial"][n]) for n in frozen)
    assert any(not torch.equal(rank0["final"][n], rank0["initial"][n]) for n in trainable)
    gradual, _ = _results(ddp_run, "gradual")
    assert [row["trainable_blocks"] for row in gradual["history"]] == [0, 1]


def test_validation_metrics_are_reduced_over_all_samples(ddp_run: Path) -> None:
    rank0, _ = _results(ddp_run, "last_n")
    model = build_model("resnet18", num_classes=3, pretrained=False)
    model.load_state_dict(rank0["final"])
    metrics = Trainer(model, progress=False).evaluate(DataLoader(shapes(11, 1), batch_size=4))
    best = min(rank0["history"], key=lambda row: row["val_loss"])  # restore_best: the final weights are these
    assert best["val_acc"] == metrics["acc"]
    assert best["val_loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_only_rank_0_writes_and_prints(ddp_run: Path) -> None:
    for policy in POLICIES:
        assert (ddp_run / f"ckpt_{policy}_rank0" / "last.pt").exists()
        assert not (ddp_run / f"ckpt_{policy}_rank1").exists()
    log0, log1 = [(ddp_run / f"log_rank{r}.txt").read_text() for r in (0, 1)]
    assert "epoch 2/2" in log0
    assert log1 == ""


def test_detection_map_is_computed_over_every_rank_s_images(ddp_run: Path) -> None:
    from ddp_fit_script import SyntheticShapesDetection, collate_detection

    results = _results(ddp_run, "detection")
    rank0, rank1 = results
    assert all(torch.equal(rank0["final"][k], rank1["final"][k]) for k in rank0["final"])
    assert rank0["history"][0]["val_map"] == rank1["history"][0]["val_map"]
    model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=3, pretrained=False)
    model.load_state_dict(results[0]["final"])
    val = DataLoader(
        SyntheticShapesDetection(5, image_size=64, seed=1), batch_size=2, collate_fn=collate_detection
    )
    metrics = Trainer(model, progress=False).evaluate(val)  # one process, all 5 images
    assert metrics["map"] == pytest.approx(results[0]["history"][0]["val_map"], abs=1e-6)
