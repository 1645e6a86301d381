"""Worker for tests/test_metrics_ddp.py: one of two gloo processes, each feeding the meters its share.

The shares are uneven on purpose (evaluation gives each sample to one process): classification 7 and 3
samples, plus a meter that process 1 never updates; segmentation 4 and 2 masks; detection 3 and 2
images. Every process calls ``compute()`` without summing anything itself, and saves the results.

Usage: python tests/metrics_ddp_script.py RANK INIT_FILE OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from transferkit.detection_metrics import DetectionMeter
from transferkit.metrics import ClassificationMeter, SegmentationMeter


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


def main(rank: int, init_file: str, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(results(rank), out / f"metrics_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
