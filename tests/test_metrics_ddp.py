"""The meters compute over every process themselves (torchmetrics' sync), with uneven shares per process.

Two gloo processes, forked from this one (no second import of torch), feed the meters their shares:
classification 7 and 3 samples, plus a meter that process 1 never updates; segmentation 4 and 2 masks;
detection 3 and 2 images. Every process calls ``compute()`` without summing anything itself.
"""

from __future__ import annotations

import datetime
import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from transferkit.tasks.detection_metrics import DetectionMeter
from transferkit.tasks.metrics import ClassificationMeter, SegmentationMeter

pytestmark = pytest.mark.skipif(
    not dist.is_available() or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs torch.distributed and fork",
)


def data() -> dict[str, tuple]:
    """The samples every process and the single-process reference see: logits, masks, detections."""
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(10, 7, generator=gen), torch.randint(0, 7, (10,), generator=gen)
    seg, masks = torch.randn(6, 4, 8, 8, generator=gen), torch.randint(0, 4, (6, 8, 8), generator=gen)
    masks[0, :2] = 255
    truth, found = [], []
    for _ in range(5):
        boxes = torch.rand(2, 2, generator=gen) * 30
        boxes = torch.cat([boxes, boxes + 8 + torch.rand(2, 2, generator=gen) * 20], 1)
        truth.append({"boxes": boxes, "labels": torch.randint(0, 3, (2,), generator=gen)})
        noisy = torch.cat([boxes + torch.randn(2, 4, generator=gen) * 2, boxes[:1] + 5])
        found.append(
            {
                "boxes": noisy,
                "scores": torch.rand(3, generator=gen),
                "labels": torch.randint(0, 3, (3,), generator=gen),
            }
        )
    return {"classification": (logits, labels), "segmentation": (seg, masks), "detection": (found, truth)}


SHARES = {"classification": (slice(0, 7), slice(7, 10)), "segmentation": (slice(0, 4), slice(4, 6)),
          "detection": (slice(0, 3), slice(3, 5))}  # fmt: skip


def results(rank: int | None) -> dict[str, dict[str, float]]:
    """Each meter's ``compute()`` over process ``rank``'s share (None: every sample, one process)."""
    meters = {"classification": ClassificationMeter(7), "segmentation": SegmentationMeter(4),
              "detection": DetectionMeter()}  # fmt: skip
    idle = ClassificationMeter(7)  # only process 0 updates it
    for name, (outputs, targets) in data().items():
        share = slice(None) if rank is None else SHARES[name][rank]
        meters[name].update(outputs[share], targets[share])
        if name == "classification" and rank in (0, None):
            idle.update(outputs, targets)
    return {**{name: meter.compute() for name, meter in meters.items()}, "idle": idle.compute()}


def _process(rank: int, folder: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder / 'init'}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        torch.save(results(rank), folder / f"metrics_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, float]]]:
    folder = tmp_path_factory.mktemp("metrics_ddp")
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=_process, args=(rank, folder)) for rank in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in processes] == [0, 0], "a process failed or hung (its traceback is above)"
    return [torch.load(folder / f"metrics_rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_every_process_gets_the_value_over_all_samples(per_rank):
    whole = results(None)  # one process, every sample
    assert whole["classification"]["top5"] > whole["classification"]["acc"]
    assert 0 < whole["detection"]["map_50"] < 1
    for rank in per_rank:
        assert rank["classification"] == whole["classification"]
        assert rank["segmentation"] == whole["segmentation"]
        assert rank["detection"] == pytest.approx(whole["detection"], abs=1e-12)


def test_a_process_without_batches_still_gets_the_value(per_rank):
    assert per_rank[1]["idle"] == per_rank[0]["idle"] == results(None)["idle"]
