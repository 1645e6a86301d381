"""The trainer benchmark's plumbing (tiny sizes), and the Trainer overheads it keeps small."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from benchmark_modules import load_benchmark
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.training.checkpoint import mutable_state

TINY = ["--images", "16", "--size", "32", "--batch-size", "8", "--reps", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()
    yield load_benchmark("bench_trainers")
    torch.set_num_threads(threads)  # inline jobs set the thread count


def test_smoke_run_prints_the_table_and_the_acceptance_checks(bench, capsys) -> None:
    args = [*TINY, "--inline", "--workloads", "finetune,last_n", "--finetune-epochs", "1"]
    args += ["--last-n-epochs", "1", "--trainers", "plain,transferkit,transferkit+cache"]
    rows = bench.main(args)
    out = capsys.readouterr().out
    got = {(r["workload"], r["trainer"]) for r in rows}
    assert got == {
        ("finetune", "plain"),
        ("finetune", "transferkit"),  # nothing to cache when nothing is frozen
        ("last_n", "plain"),
        ("last_n", "transferkit"),
        ("last_n", "transferkit+cache"),
    }
    assert all(r["seconds"] > 0 and r["ratio"] > 0 and r["rss_peak_mb"] > 0 for r in rows)
    assert "| workload | epochs | trainer |" in out
    assert "finetune: transferkit / plain <= 1.03" in out
    assert "last_n: cache >= 1.5x faster than plain" in out


def test_each_job_runs_in_its_own_process(bench, capsys) -> None:
    rows = bench.main([*TINY, "--workloads", "finetune", "--trainers", "plain", "--finetune-epochs", "1"])
    assert [(r["trainer"], r["runs"], r["ratio"]) for r in rows] == [("plain", 1, 1.0)]
    assert "| finetune | 1 | plain | 1 |" in capsys.readouterr().out


def test_plan_interleaves_trainers_and_runs_every_trainer_at_the_extract_point(bench) -> None:
    args = bench._parse(["--reps", "2", "--trainers", "plain,transferkit,transferkit+cache"])
    args.workloads, args.scaling_epochs, args.extract_epochs = ["scaling"], [1, 5], 5
    jobs = bench.plan(args, Path("data.pt"), lightning=False)
    order = [(j["rep"], j["epochs"], j["trainer"]) for j in jobs]
    each_rep = [(1, "plain"), (1, "transferkit+cache"),  # other points: --scaling-trainers only
                (5, "plain"), (5, "transferkit"), (5, "transferkit+cache")]  # fmt: skip
    assert order == [(rep, e, t) for rep in (0, 1) for e, t in each_rep]


def test_ratio_is_the_median_of_interleaved_pairs(bench) -> None:
    def run(trainer: str, rep: int, seconds: float) -> dict:
        return {"workload": "finetune", "epochs": 2, "trainer": trainer, "rep": rep, "seconds": seconds,
                "rss_peak_mb": 100.0, "rss_train_mb": 10.0, "loss": 1.0}  # fmt: skip

    plain, tk = [10.0, 20.0, 30.0], [9.0, 22.0, 30.0]  # pair ratios 0.9, 1.1, 1.0
    results = [run("plain", i, s) for i, s in enumerate(plain)] + [
        run("transferkit", i, s) for i, s in enumerate(tk)
    ]
    rows = {r["trainer"]: r for r in bench.summarize(results)}
    assert rows["transferkit"]["ratio"] == pytest.approx(1.0)
    assert rows["transferkit"]["seconds"] == statistics.median(tk)
    assert "[x] finetune: transferkit / plain <= 1.03: 1.000" in "\n".join(
        bench.acceptance(list(rows.values()))
    )


# ------------------------------------------------------------------------------- trainer overheads
def _tiny_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))), batch_size=4)


def test_cpu_optimizers_are_fused_only_with_a_frozen_prefix() -> None:
    # training end to end, the fused CPU kernels cost more in page faults than they save (build_optimizer)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    for name in ("adamw", "adam", "sgd"):
        defaults = Trainer(model, optimizer=name, progress=False).optimizer.defaults
        assert defaults["fused"] is None and defaults["foreach"] is None, name
    for policy, kwargs in (("all", {}), ("last_n", {"n": 2}), ("gradual", {"n": 0, "step": 1})):
        model.freeze(policy, **kwargs)
        assert Trainer(model, progress=False).optimizer.defaults["fused"] is True, policy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_builtin_optimizers_use_the_fused_kernels_on_cuda() -> None:
    model = build_model("resnet18", num_classes=2, pretrained=False)
    for name in ("adamw", "adam", "sgd"):
        assert Trainer(model, optimizer=name, progress=False).optimizer.defaults["fused"] is True, name


def test_evaluate_iterates_the_loader_once() -> None:
    """tqdm.auto's class calls iter() on what it wraps: a DataLoader would start its workers twice."""
    loader = _tiny_loader()
    iterations = []
    original = DataLoader.__iter__
    DataLoader.__iter__ = lambda self: iterations.append(1) or original(self)  # type: ignore[method-assign]
    try:
        model = build_model("resnet18", num_classes=2, pretrained=False)
        trainer = Trainer(model, progress=True)
        trainer.evaluate(loader)
        trainer.predict(loader)
    finally:
        DataLoader.__iter__ = original  # type: ignore[method-assign]
    assert len(iterations) == 2


def test_epoch_snapshot_skips_frozen_blocks() -> None:
    model = build_model("resnet18", num_classes=2, pretrained=False)
    model.freeze("all")
    snapshot = mutable_state(model)
    assert snapshot and all(k.startswith(("neck.", "head.")) for k in snapshot)
    model.freeze("last_n", n=2)
    snapshot = mutable_state(model)
    assert any(k.endswith("layer4.1.bn2.running_mean") for k in snapshot)  # trainable blocks' statistics
    assert not any("layer3" in k for k in snapshot)


def test_gpu_benchmark_smoke_run_on_the_cpu(capsys) -> None:
    module = load_benchmark("bench_gpu")
    args = ["--device", "cpu", "--model", "resnet18", "--size", "32", "--batch-size", "4"]
    rows = module.main([*args, "--steps", "2", "--warmup", "1", "--reps", "1"])
    assert [r["variant"] for r in rows] == ["plain-fp32", "transferkit-fp32", "transferkit-amp"]
    assert all(r["images_per_s"] > 0 for r in rows) and rows[0]["speedup"] == 1.0
    out = capsys.readouterr().out
    assert "| variant | images/s (median) | x plain-fp32 |" in out and "resnet18, 32 px, batch 4" in out
