"""Worker for tests/test_faults.py: a zygote that imports transferkit once, then forks training runs.

Starting an interpreter that imports torch, torchvision and timm takes about 4 s on a 2-core runner; a
fork of this process takes milliseconds and is a real process all the same: SIGKILL ends it at once with
no cleanup, and the run that resumes is another process that shares no memory with it. Before forking,
the zygote only imports and builds one model on one thread, so every child starts as a fresh interpreter
would (the OpenMP pool is never started, which is what makes forking after importing torch safe).

Protocol, one JSON object per line on stdin, one answer per line on stdout:

    {"run": {...}}   fork a child that calls `train` (or `cli_train`) with these arguments -> {"pid": PID}
    {"wait": PID}    wait for that child -> {"exit": CODE or null, "signal": SIGNAL or null}
    end of input     the zygote exits

A child stops at ``pause`` and sleeps until it is killed, after writing the file ``signals/paused``:

    ["batch", E, S]        after step S of epoch E
    ["epoch_end", E]       after epoch E, its checkpoint written and renamed
    ["partial_write", E]   inside epoch E's checkpoint write: half of last.pt.tmp written and fsynced
    ["before_rename", E]   inside it: last.pt.tmp complete and fsynced, not yet renamed over last.pt
    ["after_rename", E]    inside it: renamed over last.pt, the directory not yet fsynced
    ["started"]            no pause: writes ``signals/started`` when fit begins (to kill at a random time)

``record=True`` saves the model's and optimizer's state after every epoch to ``signals/epoch<E>.pt``.
``fsize_after=E`` limits the size of any file the child writes to half of last.pt once epoch E's
checkpoint is written (``RLIMIT_FSIZE``, with SIGXFSZ ignored so that a write fails with EFBIG), as a
full disk would; the child records the error and its state in ``signals/result.pt``.

Usage: python tests/fault_train_script.py   (driven by tests/test_faults.py)
"""

from __future__ import annotations

import io
import json
import os
import random
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import transferkit.training.trainer as trainer_module
from transferkit import Trainer, build_model, cli
from transferkit.data import SyntheticShapes

EPOCHS = 4
STEPS = 4  # per epoch: 16 samples in batches of 4
BACKBONE = "mobilenet_v3_small"


class Noisy(Dataset):
    """Flips and noise drawn from torch, numpy and python: a resumed run must restore all three RNGs."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[i]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image + float(np.random.uniform(-0.1, 0.1)) + random.uniform(-0.1, 0.1), label


def shapes(n: int, seed: int) -> TensorDataset:
    ds = SyntheticShapes(n, image_size=32, num_classes=3, seed=seed)
    images, labels = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(np.stack(labels)))


# ---------------------------------------------------------------------------------------------- hooks
class Hooks:
    """Where a child stops: wraps the Trainer's callbacks, ``torch.save`` and ``os.replace`` (child only)."""

    def __init__(self, signals: Path, pause: list[Any] | None, fsize_after: int | None, record: bool) -> None:
        self.signals, self.pause, self.fsize_after, self.record = (
            signals,
            pause or [None],
            fsize_after,
            record,
        )
        self.epoch = -1
        self.real_save, self.real_replace = torch.save, os.replace
        self.real_emit = trainer_module.Callbacks.emit

    def install(self) -> None:
        hooks = self

        def emit(callbacks: Any, event: str, trainer: Any) -> None:
            hooks.event(event, trainer)
            hooks.real_emit(callbacks, event, trainer)

        trainer_module.Callbacks.emit = emit
        torch.save = self.save
        os.replace = self.replace

    def stop(self) -> None:
        (self.signals / "paused").write_text(json.dumps(self.pause))
        time.sleep(600)  # the test kills it long before; if the test died, don't linger
        os._exit(3)

    def event(self, event: str, trainer: Any) -> None:
        kind, *at = self.pause
        if event == "on_fit_start" and kind == "started":
            (self.signals / "started").write_text("")
        if event == "on_epoch_start":
            self.epoch = trainer.epoch
        if event == "on_batch_end" and kind == "batch" and [trainer.epoch, trainer.step] == at:
            self.stop()
        if event == "on_epoch_end":
            if self.record:
                state = {"state": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
                self.real_save(state, self.signals / f"epoch{trainer.epoch}.pt")
            if kind == "epoch_end" and [trainer.epoch] == at:
                self.stop()
            if self.fsize_after == trainer.epoch:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                size = (Path(trainer.checkpoint_dir) / "last.pt").stat().st_size
                resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))

    def writing(self, kind: str) -> bool:
        return self.pause == [kind, self.epoch]

    def save(self, obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        name = getattr(f, "name", None)
        if isinstance(name, str) and name.endswith("last.pt.tmp") and self.writing("partial_write"):
            buffer = io.BytesIO()
            self.real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            os.fsync(f.fileno())
            self.stop()
        self.real_save(obj, f, *args, **kwargs)

    def replace(self, src: Any, dst: Any) -> None:
        checkpoint = str(src).endswith("last.pt.tmp")
        if checkpoint and self.writing("before_rename"):
            self.stop()
        self.real_replace(src, dst)
        if checkpoint and self.writing("after_rename"):
            self.stop()


# ------------------------------------------------------------------------------------------------ runs
def train(checkpoint_dir: str, signals: str) -> None:
    """The run every test resumes: mobilenet_v3_small, gradual unfreezing, shuffled noisy data, val."""
    torch.manual_seed(0)
    model = build_model(BACKBONE, num_classes=3, pretrained=False)
    model.freeze(policy="gradual", n=0, step=2)
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(Noisy(shapes(4 * STEPS, 0)), batch_size=4, shuffle=True, generator=generator)
    val = DataLoader(shapes(8, 1), batch_size=8)
    trainer = Trainer(
        model, epochs=EPOCHS, lr=5e-3, checkpoint_dir=checkpoint_dir, resume=True, progress=False, seed=0,
        restore_best=False,  # end with the last epoch's weights, which every epoch before shaped
    )  # fmt: skip
    try:
        history = trainer.fit({"train": train, "val": val})
    except OSError as err:  # the disk-full case: record what the user would see, and the state left
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        result = {"error": type(err).__name__, "message": str(err), "errno": err.errno}
        result |= {"state": model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
        torch.save({**result, "history": trainer.history}, Path(signals) / "result.pt")
        return
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    torch.save({"state": model.state_dict(), "history": rows}, Path(signals) / "result.pt")


def cli_train(argv: list[str], signals: str) -> None:
    """``transferkit train ...`` in this process; the exit status goes to ``signals/exit``."""
    status = cli.main(argv)
    (Path(signals) / "exit").write_text(str(status))


def child(spec: dict[str, Any]) -> None:
    signals = Path(spec["signals"])
    log = os.open(signals / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    Hooks(signals, spec.get("pause"), spec.get("fsize_after"), spec.get("record", False)).install()
    if "argv" in spec:
        cli_train(spec["argv"], spec["signals"])
    else:
        train(spec["checkpoint_dir"], spec["signals"])


def serve() -> None:
    torch.set_num_threads(1)
    build_model(BACKBONE, num_classes=3, pretrained=False)  # warm the lazy imports and caches once
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "run" in request:
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    child(request["run"])
                except BaseException:
                    traceback.print_exc()
                    code = 1
                os._exit(code)
            answer: dict[str, Any] = {"pid": pid}
        else:
            _, status = os.waitpid(request["wait"], 0)
            answer = {
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
