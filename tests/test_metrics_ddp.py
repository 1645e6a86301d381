"""The meters compute over every process themselves (torchmetrics' sync), with uneven shares per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
SCRIPT = Path(__file__).with_name("metrics_ddp_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from metrics_ddp_script import results  # noqa: E402


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, float]]]:
    out = tmp_path_factory.mktemp("metrics_ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parent.parent), env.get("PYTHONPATH")]))
    command = [sys.executable, str(SCRIPT)]
    ranks = [
        subprocess.Popen(
            [*command, str(r), str(out / "init"), str(out)], env=env, stderr=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    errors = [p.communicate(timeout=120)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n".join(errors)
    return [torch.load(out / f"metrics_rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_every_process_gets_the_value_over_all_samples(per_rank):
    whole = results(None)  # one process, every sample
    assert whole["classification"]["top5"] > whole["classification"]["acc"]
    assert 0 < whole["detection"]["map_50"] < 1
    for rank in per_rank:
        assert rank["classification"] == whole["classification"]
        assert rank["segmentation"] == whole["segmentation"]
        assert rank["detection"] == pytest.approx(whole["detection"], abs=1e-12)


def test_a_process_without_batches_still_gets_the_value(per_rank):
    whole = results(None)
    assert per_rank[1]["idle"] == per_rank[0]["idle"] == whole["idle"]
