"""Worker for tests/test_trainer_ddp.py, launched by ``torch.distributed.run --nproc_per_node=2``.

Each rank builds a differently initialised model (DDP must broadcast rank 0's), trains it with a Trainer
under a ``last_n`` and then a ``gradual`` freeze, and saves what the test compares. The rank's stdout and
stderr go to ``OUT/log_rank<r>.txt`` so the test can check that only rank 0 printed.

Usage: python -m torch.distributed.run --nproc_per_node=2 tests/ddp_fit_script.py OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.data import SyntheticShapes, SyntheticShapesDetection, collate_detection

POLICIES = {"last_n": {"policy": "last_n", "n": 2}, "gradual": {"policy": "gradual", "n": 0, "step": 1}}


def shapes(n: int, seed: int) -> TensorDataset:
    ds = SyntheticShapes(n, image_size=32, num_classes=3, seed=seed)
    images, labels = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(np.stack(labels)))


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    log = os.open(out / f"log_rank{rank}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    train = DataLoader(shapes(16, 0), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(shapes(11, 1), batch_size=4)  # 11 samples: the ranks get 6 and 5
    for name, freeze in POLICIES.items():
        torch.manual_seed(rank)
        model = build_model("resnet18", num_classes=3, pretrained=False)
        model.freeze(**freeze)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = Trainer(model, epochs=2, lr=3e-3, checkpoint_dir=out / f"ckpt_{name}_rank{rank}", seed=0)
        history = trainer.fit({"train": train, "val": val})
        result = {"initial": initial, "final": model.state_dict(), "history": history}
        result["world_size"] = trainer.world_size
        torch.save(result, out / f"result_{name}_rank{rank}.pt")
    detection(out, rank)
    dist.destroy_process_group()


def detection(out: Path, rank: int) -> None:
    """FCOS for one epoch; val has 5 images, so the ranks hold 3 and 2 of them when mAP is computed."""
    torch.manual_seed(rank)
    model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=3, pretrained=False)
    data = {
        name: SyntheticShapesDetection(n, image_size=64, seed=s)
        for name, n, s in (("train", 8, 0), ("val", 5, 1))
    }
    loaders = {
        name: DataLoader(ds, batch_size=2, shuffle=name == "train", collate_fn=collate_detection,
                         generator=torch.Generator().manual_seed(0))
        for name, ds in data.items()
    }  # fmt: skip
    history = Trainer(model, epochs=1, lr=1e-3, seed=0, progress=False).fit(loaders)
    torch.save({"final": model.state_dict(), "history": history}, out / f"result_detection_rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
