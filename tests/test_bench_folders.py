"""The folder benchmark's plumbing, at tiny sizes: photos, interleaved plan, ratios, table, checks."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_folders.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_folders", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # inline jobs set the thread count


def test_generated_photos_are_real_size_jpegs_of_two_classes(bench, tmp_path: Path) -> None:
    root = bench.make_photo_folder(tmp_path, per_class=3, seed=0)
    files = sorted(root.rglob("*.jpg"))
    assert sorted({f.parent.name for f in files}) == ["ants", "bees"] and len(files) == 6
    sizes = [Image.open(f).size for f in files]
    assert all(400 <= w <= 640 and 0.64 * w <= h <= 0.8 * w for w, h in sizes)
    assert len(set(sizes)) > 1


def test_smoke_run_prints_the_table_and_the_checks(bench, capsys) -> None:
    tiny = ["--images", "8", "--heldout", "4", "--size", "32", "--batch-size", "4", "--reps", "1"]
    tiny += ["--threads", "1", "--tutorial-workers", "0", "--transferkit-workers", "0", "--inline"]
    tiny += [
        "--finetune-epochs",
        "1",
        "--extract-epochs",
        "2",
        "--workloads",
        "folder_finetune,folder_extract",
    ]
    rows = bench.main(tiny)
    got = [(r["workload"], r["runner"]) for r in rows]
    assert got == [
        ("folder_finetune", "tutorial"),
        ("folder_finetune", "transferkit"),
        ("folder_finetune", "transferkit+cache"),
        ("folder_finetune", "limit"),
        ("folder_extract", "tutorial"),  # transferkit uncached only with --extract-uncached
        ("folder_extract", "transferkit+cache"),
        ("folder_extract", "limit"),
    ]
    assert all(r["seconds"] > 0 and 0 <= r["heldout_acc"] <= 1 and r["rss_peak_mb"] > 0 for r in rows)
    by = {(r["workload"], r["runner"]): r for r in rows}
    assert by[("folder_finetune", "transferkit+cache")]["image_cache_mb"] > 0  # 8 photos, decoded
    assert by[("folder_extract", "transferkit+cache")]["image_cache_mb"] == 0  # the feature cache's run
    out = capsys.readouterr().out
    assert "| workload | epochs | runner | workers |" in out
    assert "folder_extract: cache_features >= 4.5x faster than the tutorial" in out
    assert "folder_finetune: image cache <= 1.10x the limit" in out


def test_ratios_are_medians_of_same_repetition_pairs(bench) -> None:
    def run(runner: str, rep: int, seconds: float) -> dict:
        return {"workload": "folder_last_n", "epochs": 3, "runner": runner, "rep": rep, "seconds": seconds,
                "workers": 2, "rss_peak_mb": 1.0, "worker_peak_mb": 1.0, "image_cache_mb": 0.0, "loss": 1.0,
                "heldout_acc": 0.5}  # fmt: skip

    limit, cached, tutorial = [10.0, 20.0, 30.0], [10.5, 21.0, 36.0], [20.0, 30.0, 60.0]
    results = [run(name, i, s) for name, times in (("limit", limit), ("transferkit+cache", cached),
               ("tutorial", tutorial)) for i, s in enumerate(times)]  # fmt: skip
    rows = {r["runner"]: r for r in bench.summarize(results)}
    assert rows["transferkit+cache"]["x_limit"] == pytest.approx(1.05)  # pairs 1.05, 1.05, 1.2
    assert rows["tutorial"]["x_limit"] == pytest.approx(2.0)  # pairs 2, 1.5, 2
    assert rows["transferkit+cache"]["seconds"] == statistics.median(cached)
    checks = "\n".join(bench.acceptance(list(rows.values()), accuracy_noise=0.05))
    assert "[x] folder_last_n: image cache <= 1.10x the limit: 1.050x (tutorial 2.000x)" in checks
