"""Attacks on saved models and run folders: loads during saves, and kill -9 at random moments.

Not a speed benchmark: it prints counts that must be zero.

1. ``save-while-load``: one process saves two models in turn into one folder (their class names in
   opposite orders, and head biases that say which is which) while this process loads it again and again;
   a load whose names belong to one save and weights to the other is torn.
2. ``kill-save``: a process saving a model in a loop is killed (SIGKILL) after a random delay; the folder
   must load afterwards, and the next save must leave no temporary file behind.
3. ``kill-train``: ``transferkit train`` on a small folder is killed after a random delay; the run must
   then be usable: ``train --resume`` finishes it (or, killed before the run began, the same command
   again starts it) and ``predict`` works on the result.

Usage:
    python benchmarks/attack_runs.py --loads 100 --trials 10
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

import transferkit as tk
from transferkit.data.synthetic import make_shapes_folder

_SAVER = textwrap.dedent(
    """
    import sys, torch, transferkit as tk
    folder, rounds = sys.argv[1], int(sys.argv[2])
    models = []
    for sign, classes in ((1.0, ["cat", "dog"]), (-1.0, ["dog", "cat"])):
        m = tk.build_model("resnet18", num_classes=2, pretrained=False, classes=classes)
        with torch.no_grad():
            m.head.fc.bias.copy_(torch.tensor([sign, -sign]))
        models.append(m)
    models[0].save(folder)
    print("ready", flush=True)
    i = 0
    while rounds < 0 or i < rounds:
        models[i % 2].save(folder)
        i += 1
    """
)


def _consistent(folder: Path) -> bool:
    model = tk.load_model(folder)
    first = "cat" if model.head.fc.bias[0] > 0 else "dog"
    return model.classes[0] == first


def save_while_load(work: Path, loads: int) -> dict[str, int]:
    folder = work / "saved"
    saver = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(folder), "-1"], stdout=subprocess.PIPE, text=True
    )
    torn = errors = done = 0
    try:
        assert saver.stdout is not None and saver.stdout.readline().strip() == "ready"
        while done < loads:
            try:
                torn += not _consistent(folder)
            except Exception as err:  # any failure to load counts
                errors += 1
                print(f"  load {done}: {type(err).__name__}: {err}")
            done += 1
    finally:
        saver.kill()
        saver.wait()
    return {"loads": done, "torn": torn, "errors": errors}


def kill_save(work: Path, trials: int, rng: random.Random) -> dict[str, int]:
    unusable = leftovers = 0
    for trial in range(trials):
        folder = work / f"killed-save-{trial}"
        saver = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(folder), "-1"], stdout=subprocess.PIPE, text=True
        )
        assert saver.stdout is not None and saver.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.0))
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        try:
            ok = _consistent(folder)
        except Exception as err:
            print(f"  trial {trial}: {type(err).__name__}: {err}")
            ok = False
        unusable += not ok
        tk.load_model(folder).save(folder) if ok else None
        leftovers += len([p for p in folder.iterdir() if p.name.endswith(".tmp")])
    return {"trials": trials, "unusable": unusable, "temp files left after the next save": leftovers}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "transferkit.cli", *args], capture_output=True, text=True)


def kill_train(work: Path, trials: int, rng: random.Random) -> dict[str, int]:
    data = make_shapes_folder(
        work / "shapes", num_classes=2, per_class={"train": 24, "val": 8}, image_size=32
    )
    train = ["train", "--data", str(data), "--backbone", "resnet18", "--pretrained", "false", "--epochs", "3"]
    train += ["--image-size", "32", "--batch-size", "8", "--freeze", "none"]
    started = time.perf_counter()
    reference = _cli(*train, "--out", str(work / "reference"))
    assert reference.returncode == 0, reference.stderr
    span = time.perf_counter() - started
    image = next((data / "val").rglob("*.jpg"))
    unusable, moments = 0, []
    for trial in range(trials):
        out = work / f"killed-train-{trial}"
        process = subprocess.Popen([sys.executable, "-m", "transferkit.cli", *train, "--out", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        delay = rng.uniform(0.0, span)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        moments.append(round(delay, 1))
        resumed = _cli("train", "--resume", "--out", str(out))
        if resumed.returncode != 0 and "holds no run" in resumed.stderr:  # killed before the run began
            resumed = _cli(*train, "--out", str(out))  # the same command again must start it
        predicted = _cli("predict", "--model", str(out), str(image))
        if resumed.returncode != 0 or predicted.returncode != 0:
            unusable += 1
            why = f"resume {resumed.returncode} {resumed.stderr.strip()[-300:]}"
            why += f" | predict {predicted.returncode} {predicted.stderr.strip()[-300:]}"
            print(f"  trial {trial} (killed after {delay:.1f}s): {why}")
    print(f"  kill moments (s after start; an uninterrupted run took {span:.1f}s): {moments}")
    return {"trials": trials, "unusable": unusable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=100)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="transferkit-attack-") as tmp:
        work = Path(tmp)
        for name, attack in (
            ("save-while-load", lambda: save_while_load(work, args.loads)),
            ("kill-save", lambda: kill_save(work, args.trials, rng)),
            ("kill-train", lambda: kill_train(work, args.trials, rng)),
        ):
            print(f"{name}: {attack()}", flush=True)


if __name__ == "__main__":
    main()
