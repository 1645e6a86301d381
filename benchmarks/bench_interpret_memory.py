"""Benchmark: the memory of interpreting a validation set against that of evaluating it (CPU).

For each task, a small model from random weights runs over the same 2,000 synthetic validation images
(drawn on the fly by the dataset, never held as a whole) twice, each time in a fresh process:
``Trainer(model).evaluate(loader)`` and ``interpret(model, loader)``. Each process reports its peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and the peak it had reached just
before the pass; "pass adds" is the difference.

Why the RSS and not tracemalloc: tensors live in memory that PyTorch's allocator takes from the C
library, which tracemalloc does not see; only the process's resident size counts the masks, boxes and
activations that would grow if the interpretation kept them. It includes the interpreter, torch and the
model, which both modes share; "pass adds" shows the part the pass itself is responsible for.

    python benchmarks/bench_interpret_memory.py                     # 2,000 images, every task
    python benchmarks/bench_interpret_memory.py --tasks detection --images 500
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

TASKS = ("classification", "segmentation", "detection")
MODES = ("evaluate", "interpret")
BAR = 1.5  # acceptance: interpretation peaks below 1.5x the memory of evaluating


def _peak_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _loader(task: str, images: int, size: int, batch_size: int) -> Any:
    """The validation loader of ``task``: SyntheticShapes images drawn as they are read."""
    from torch.utils.data import DataLoader

    from transferkit.data import SyntheticShapes, SyntheticShapesDetection
    from transferkit.tasks import get_task

    if task == "detection":
        dataset: Any = SyntheticShapesDetection(images, image_size=size, num_classes=3, seed=1)
    else:
        dataset = SyntheticShapes(images, image_size=size, num_classes=3, task=task, seed=1)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=get_task(task).collate_fn)


def _model(task: str) -> Any:
    import torch

    from transferkit import build_model

    torch.manual_seed(0)
    if task == "classification":
        return build_model("resnet18", num_classes=3, pretrained=False)
    if task == "segmentation":
        return build_model("resnet18", head="fcn", num_classes=4, pretrained=False)
    return build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=3, pretrained=False)


def job(task: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One pass in this process: its peak RSS before and after, and its time."""
    import torch

    from transferkit import Trainer
    from transferkit.interpret import interpret

    torch.set_num_threads(args.threads)
    size = args.detection_size if task == "detection" else args.size
    model, loader = _model(task), _loader(task, args.images, size, args.batch_size)
    before = _peak_mb()
    start = time.perf_counter()
    if mode == "evaluate":
        Trainer(model, device="cpu", progress=False).evaluate(loader)
    else:
        interpret(model, loader, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    return {"task": task, "mode": mode, "size": size, "before_mb": before, "peak_mb": _peak_mb(),
            "seconds": seconds}  # fmt: skip


def run_job(task: str, mode: str, argv: Sequence[str]) -> dict[str, Any]:
    """`job` in a fresh Python process, so that no peak of another pass counts."""
    found = subprocess.run(
        [sys.executable, __file__, *argv, "--job", f"{task}:{mode}"], capture_output=True, text=True
    )
    if found.returncode != 0:
        raise RuntimeError(f"the {task} {mode} job failed:\n{found.stderr}")
    return json.loads(found.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The results as a Markdown table, then one acceptance line per task."""
    lines = [
        f"{args.images} validation images, batch {args.batch_size}, {args.threads} threads, CPU, fp32",
        "",
        "| task | px | mode | seconds | peak RSS MB | pass adds MB | peak / evaluate |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    checks = []
    for task in dict.fromkeys(r["task"] for r in rows):
        pair = {r["mode"]: r for r in rows if r["task"] == task}
        base = pair["evaluate"]["peak_mb"]
        for mode in MODES:
            r = pair[mode]
            lines.append(
                f"| {task} | {r['size']} | {mode} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] - r['before_mb']:.0f} | {r['peak_mb'] / base:.3f} |"
            )
        ratio = pair["interpret"]["peak_mb"] / base
        checks.append(
            f"- [{'x' if ratio < BAR else ' '}] {task}: interpret peak < {BAR}x evaluate: {ratio:.3f}"
        )
    return [*lines, "", "Acceptance:", *checks]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    p.add_argument("--images", type=int, default=2000, help="validation images")
    p.add_argument("--size", type=int, default=32, help="image side (classification, segmentation)")
    p.add_argument("--detection-size", type=int, default=64, help="image side for detection")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # TASK:MODE, run in this process
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run every task's two passes in their own processes, print the table; returns its rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.job is not None:
        task, mode = args.job.split(":")
        print(json.dumps(job(task, mode, args)))
        return []
    rows = [run_job(task, mode, argv) for task in args.tasks.split(",") for mode in MODES]
    print("\n".join(table(rows, args)))
    return rows


if __name__ == "__main__":
    main()
