"""Recipes: a pretrained classifier nobody froze is probed, then its top blocks tuned; a choice is kept."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model, load_model
from transferkit.cli import parse_freeze
from transferkit.cli.options import UsageError
from transferkit.cli.resume import TRAIN_DEFAULTS, resumed_arguments
from transferkit.training import recipe as recipe_module
from transferkit.training.best import BestEpoch
from transferkit.training.phases import ProbeResult, keep_the_better, soften_head
from transferkit.training.recipe import (
    FAR_SHIFT,
    HEAD_TEMPERATURE,
    PROBE_LR,
    Phase,
    Plan,
    default_finetune_lr,
    default_trainable_blocks,
    plan_recipe,
    probe_epochs,
    uses_default_recipe,
)


def _data(per_class: int, size: int = 32) -> DataLoader:
    data = TensorDataset(torch.randn(2 * per_class, 3, size, size), torch.arange(2 * per_class) % 2)
    return DataLoader(data, batch_size=10, shuffle=True)


def _separable(per_class: int, size: int = 32) -> DataLoader:
    """Two classes a frozen backbone tells apart: bright and dark images."""
    labels = torch.arange(2 * per_class) % 2
    images = torch.randn(2 * per_class, 3, size, size) * 0.3 + (labels * 2.0 - 1.0).view(-1, 1, 1, 1)
    return DataLoader(TensorDataset(images, labels), batch_size=10, shuffle=True)


def test_building_a_trainer_never_changes_what_trains(weights: Path) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    assert uses_default_recipe(model) and len(model.trainable_blocks) == 9
    trainer = Trainer(model, progress=False, device="cpu")
    assert len(model.trainable_blocks) == 9 and trainer.plan is None  # decided in fit, with the data
    assert uses_default_recipe(model)


def test_auto_probes_then_fine_tunes_the_top_blocks_and_the_history_records_it(
    weights: Path, one_torch_thread, capsys
) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    trainer = Trainer(model, epochs=2, device="cpu", seed=0)
    history = trainer.fit(_data(3))  # 6 images, one batch per epoch: the probe runs its most epochs
    probe = trainer.plan.phases[0]
    assert trainer.plan == Plan(  # near data (shift below FAR_SHIFT), 3 per class: a sixth of the blocks
        "auto",
        (Phase("probe", 40, PROBE_LR, 0, cached=True), Phase("finetune", 2, 1e-3, 2, head_temperature=10.0)),
        select=False,
    )
    assert [r["phase"] for r in history] == ["probe"] * probe.epochs + ["finetune"] * 2
    assert [r["epoch"] for r in history] == list(range(probe.epochs + 2))  # one count across phases
    assert {r["trainable_blocks"] for r in history[:-2]} == {0} and history[-1]["trainable_blocks"] == 2
    assert history[0]["lr"] == pytest.approx(PROBE_LR) and history[-2]["lr"] == pytest.approx(1e-3)
    assert model.trainable_blocks == ["layer4.0", "layer4.1"] and uses_default_recipe(model)
    out = capsys.readouterr().out
    assert "recipe auto: probe (cached features) 40 epochs at lr 0.01, then fine-tune the top 2 of 9" in out
    assert "blocks from the head's logits / 10 2 epochs at lr 0.001" in out
    assert out.count("; ends fine-tuned (no validation data to keep the probe where it scores better)") == 1


def test_the_fine_tune_phase_starts_from_the_probes_logits_divided_by_the_temperature(
    weights: Path, one_torch_thread
) -> None:
    started: dict[str, torch.Tensor] = {}

    class Record:
        def on_fit_start(self, trainer: Trainer) -> None:
            started.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    model = build_model("resnet18", num_classes=2, pretrained=weights)
    trainer = Trainer(model, epochs=1, device="cpu", progress=False, callbacks=[Record()])
    trainer.fit(_data(3))
    probe = trainer.probe.state  # the probe's own head, unscaled: what keep_the_better restores
    assert HEAD_TEMPERATURE == 10.0
    for key in ("head.fc.weight", "head.fc.bias"):
        assert probe[key].abs().sum() > 0
        torch.testing.assert_close(started[key], probe[key] / HEAD_TEMPERATURE, rtol=0, atol=0)
    images = torch.randn(4, 3, 32, 32)
    model.load_state_dict({**model.state_dict(), **probe})
    model.eval()
    with torch.no_grad():
        logits = model(images)
        soften_head(model, HEAD_TEMPERATURE)
        torch.testing.assert_close(model(images), logits / HEAD_TEMPERATURE)  # same decisions, softer


def test_a_head_without_a_linear_layer_is_left_as_it_is_and_said() -> None:
    head = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.Flatten())
    before = [p.clone() for p in head.parameters()]
    with pytest.warns(UserWarning, match="head Sequential has no nn.Linear layer"):
        soften_head(SimpleNamespace(head=head), HEAD_TEMPERATURE)
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))


def test_the_probe_leaves_the_backbone_bit_identical_and_trains_the_head(
    weights: Path, one_torch_thread
) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = Trainer(model, recipe="probe", device="cpu", progress=False).fit(_data(5))
    assert {r["phase"] for r in history} == {"probe"} and len(history) == probe_epochs(1)
    after = model.state_dict()
    for key, value in before.items():
        same = torch.equal(after[key], value)
        assert same == key.startswith("backbone."), key  # the backbone (and its norm statistics) untouched
    assert model.trainable_blocks == []


def test_more_images_per_class_fine_tune_half_the_blocks(weights: Path, one_torch_thread) -> None:
    trainer = Trainer(build_model("resnet18", num_classes=2, pretrained=weights), epochs=1, progress=False)
    trainer.fit(_data(10))
    assert trainer.plan.phases[1].blocks == 4 and len(trainer.model.trainable_blocks) == 4


@pytest.mark.parametrize(
    ("choose", "trainable"),
    [
        (lambda m: m.freeze("last_n", n=4), 4),
        (lambda m: m.freeze(), 0),
        (lambda m: m.unfreeze(), 9),  # the way to fine-tune everything
        (lambda m: m.freeze("gradual", n=1, step=2), 1),
        (lambda m: m.load_freeze_state({"policy": "none"}), 9),
    ],
)
def test_a_freeze_the_user_chose_is_trained_as_it_is(
    weights: Path, one_torch_thread, choose, trainable
) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    choose(model)
    assert not uses_default_recipe(model)
    trainer = Trainer(model, epochs=1, progress=False, device="cpu")
    history = trainer.fit(_data(2))
    assert trainer.plan.recipe == "finetune" and len(history) == 1 and "phase" not in history[0]
    assert history[0]["trainable_blocks"] == trainable


def test_lp_ft_keeps_the_users_freeze_for_its_fine_tune_phase(weights: Path, one_torch_thread) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    model.freeze("last_n", n=2)
    history = Trainer(model, epochs=1, recipe="lp_ft", lr=3e-4, progress=False).fit(_data(2))
    assert history[0]["trainable_blocks"] == 0 and history[-1]["trainable_blocks"] == 2
    assert history[-1]["lr"] == pytest.approx(3e-4)  # a given lr is the fine-tune phase's
    assert model.freeze_state()["n"] == 2 and not uses_default_recipe(model)  # still the user's


def test_random_weights_and_other_tasks_train_everything(weights: Path, one_torch_thread) -> None:
    random_init = build_model("resnet18", num_classes=2, pretrained=False)
    segmenter = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=3, pretrained=weights)
    for model in (random_init, segmenter):
        assert not uses_default_recipe(model)
        Trainer(model, progress=False, device="cpu")
        assert len(model.trainable_blocks) == 9
    trainer = Trainer(random_init, epochs=1, progress=False)
    trainer.fit(_data(2))
    assert trainer.plan.recipe == "finetune" and len(random_init.trainable_blocks) == 9


def test_finetune_recipe_trains_a_never_frozen_model_whole(weights: Path, one_torch_thread) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    history = Trainer(model, epochs=1, recipe="finetune", progress=False).fit(_data(2))
    assert history[0]["trainable_blocks"] == 9 and "phase" not in history[0]


def test_unknown_recipe_is_named() -> None:
    model = build_model("resnet18", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match=r"unknown recipe 'lpft'; use one of \['auto', 'probe', 'lp_ft'"):
        Trainer(model, recipe="lpft")


def _probe_result(model, acc: float, loss: float) -> ProbeResult:
    state = {k: torch.full_like(v, 7.0) for k, v in model.state_dict().items() if k.startswith("head.")}
    return ProbeResult([{"phase": "probe", "epoch": 0, "val_acc": acc, "val_loss": loss}], loss, state)


@pytest.mark.parametrize(
    ("probe_acc", "probe_loss", "kept"),
    [
        (0.9, 0.9, "probe"),  # more images right: kept, whatever its loss
        (0.7, 0.1, "finetune"),  # fewer right: a lower loss does not make up for it
        (0.8, 0.2, "finetune"),  # as many right: the fine-tuned model, though the probe's loss is lower
        (0.8, 0.9, "finetune"),
    ],
)
def test_auto_with_validation_ends_with_the_better_phase(weights: Path, probe_acc, probe_loss, kept) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    model.freeze("last_n", n=3)
    plan = Plan("auto", (Phase("probe", 1, 1e-2, 0), Phase("finetune", 2, 1e-3, 3)), select=True)
    history = [
        {"phase": "finetune", "epoch": 1, "val_acc": 0.8, "val_loss": 0.5},  # the best: restored
        {"phase": "finetune", "epoch": 2, "val_acc": 0.95, "val_loss": 0.6},
    ]
    best = BestEpoch("val_loss", keep_weights=True)
    for row in history:
        best.update(row, model)
    tuned = {k: v.clone() for k, v in model.state_dict().items()}
    assert keep_the_better(model, plan, _probe_result(model, probe_acc, probe_loss), best, history) == kept
    head = model.state_dict()["head.fc.weight"]
    if kept == "probe":
        assert torch.all(head == 7.0) and model.trainable_blocks == []
    else:
        assert torch.equal(head, tuned["head.fc.weight"]) and len(model.trainable_blocks) == 3


@pytest.mark.parametrize(("probe_loss", "kept"), [(0.2, "probe"), (0.9, "finetune")])
def test_without_val_acc_on_either_phase_the_monitor_chooses(weights: Path, probe_loss, kept) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    model.freeze("last_n", n=3)
    plan = Plan("auto", (Phase("probe", 1, 1e-2, 0), Phase("finetune", 1, 1e-3, 3)), select=True)
    history = [{"phase": "finetune", "epoch": 1, "val_loss": 0.5}]  # a task whose metrics hold no acc
    best = BestEpoch("val_loss", keep_weights=True)
    best.update(history[0], model)
    probe = _probe_result(model, 0.0, probe_loss)
    del probe.rows[0]["val_acc"]
    assert keep_the_better(model, plan, probe, best, history) == kept


def test_auto_with_validation_records_which_phase_it_kept(weights: Path, one_torch_thread) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    trainer = Trainer(model, epochs=1, progress=False, seed=0)
    trainer.fit({"train": _data(3), "val": _data(2)})
    assert trainer.plan.select and trainer.kept in ("probe", "finetune")
    line = trainer.plan.describe(len(model.blocks))
    assert line.endswith("; ends with the better on val_acc, fine-tuned on a tie"), line
    assert "ends fine-tuned" not in line
    tuned = min((r for r in trainer.history if r["phase"] == "finetune"), key=lambda r: r["val_loss"])
    assert (trainer.kept == "probe") == (trainer.probe.rows[-1]["val_acc"] > tuned["val_acc"])


def test_before_fine_tuning_the_probe_trains_all_its_epochs_not_its_best_on_validation(
    weights: Path, one_torch_thread
) -> None:
    torch.manual_seed(0)
    train, val = _data(3), _data(2)  # noise: the probe's validation loss is lowest in an early epoch

    def fit(recipe: str, **options) -> Trainer:
        torch.manual_seed(0)  # the same new head
        trainer = Trainer(
            build_model("resnet18", num_classes=2, pretrained=weights),
            epochs=1, recipe=recipe, progress=False, seed=0, device="cpu", **options,
        )  # fmt: skip
        trainer.fit({"train": train, "val": val})
        return trainer

    auto = fit("auto")
    assert {r["phase"] for r in auto.probe.rows} == {"probe"}  # the fine-tune rows are the history's
    losses = [r["val_loss"] for r in auto.probe.rows]
    assert losses.index(min(losses)) < len(losses) - 1  # the data does what the test needs
    assert auto.probe.score == losses[-1]  # the probe as it ended
    converged = fit("probe", restore_best=False).model.state_dict()
    restored = fit("probe").model.state_dict()  # the probe alone keeps restore_best
    assert auto.probe.state.keys() == converged.keys()  # the backbone too: ending with it puts it back
    for key, value in auto.probe.state.items():
        torch.testing.assert_close(value, converged[key], rtol=0, atol=0)
    assert not torch.equal(auto.probe.state["head.fc.weight"], restored["head.fc.weight"])


def test_ending_with_the_probe_puts_the_fine_tuned_blocks_back_bit_for_bit(
    weights: Path, one_torch_thread
) -> None:
    torch.manual_seed(0)
    train, val = _separable(3), _separable(2)
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    pretrained = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    trainer = Trainer(model, epochs=1, lr=0.05, progress=False, seed=0, device="cpu")  # wrecks fine-tuning
    trainer.fit({"train": train, "val": val})
    tuned = next(r for r in trainer.history if r["phase"] == "finetune")
    assert trainer.probe.rows[-1]["val_acc"] > tuned["val_acc"]  # more right: the probe, not a tie
    assert trainer.kept == "probe" and model.trainable_blocks == []
    state = model.state_dict()
    for key, value in pretrained.items():  # the fine-tuned top blocks, and their norm statistics
        assert torch.equal(state[key], value), key
    for key, value in trainer.probe.state.items():
        assert torch.equal(state[key], value), key


def _as_written_before(folder: Path) -> None:
    """Rewrites ``folder/last.pt`` as checkpoints were written before kept weights were stored beside the
    model's (whole copies) and before they kept the plan."""
    ckpt = torch.load(folder / "last.pt", weights_only=True)
    del ckpt["plan"]
    for entry in (ckpt["best"], ckpt["probe"]):
        if entry["state"] is not None:
            stored = entry["state"]
            entry["state"] = {**{k: ckpt["model"][k] for k in stored["unchanged"]}, **stored["changed"]}
    torch.save(ckpt, folder / "last.pt")


@pytest.mark.parametrize("lr, kept", [(3e-4, "finetune"), (0.05, "probe")])  # 0.05 wrecks fine-tuning
def test_an_interrupted_auto_run_resumes_to_the_same_end(
    weights: Path, tmp_path: Path, one_torch_thread, monkeypatch, lr, kept
) -> None:
    class StopAfter:
        def __init__(self, epoch: int) -> None:
            self.epoch = epoch

        def on_epoch_end(self, trainer) -> None:
            trainer.should_stop = trainer.epoch == self.epoch

    def run(folder: Path, callbacks=(), resume=False) -> tuple[Trainer, list, dict]:
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=2, pretrained=weights)
        trainer = Trainer(
            model,
            epochs=3,
            lr=lr,
            progress=False,
            seed=0,
            checkpoint_dir=folder,
            resume=resume,
            callbacks=list(callbacks),
        )
        history = trainer.fit({"train": _data(3), "val": _data(2)})
        return trainer, history, model.state_dict()

    whole, history, whole_state = run(tmp_path / "a")
    assert whole.kept == kept
    run(tmp_path / "b", [StopAfter(probe_epochs(1) + 1)])  # stops after the second fine-tune epoch
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    _as_written_before(tmp_path / "c")  # which resumes all the same
    for folder in ("b", "c"):
        with monkeypatch.context() as patch:
            if folder == "b":  # the data (or the device) would now plan otherwise: the run keeps its plan
                patch.setattr(recipe_module, "input_shift", lambda model, loader: 2 * FAR_SHIFT)
            resumed, resumed_history, resumed_state = run(tmp_path / folder, resume=True)
        assert resumed.plan == whole.plan  # "c", without a plan in its checkpoint: decided again, alike
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed_history] == [
            {k: v for k, v in r.items() if k != "seconds"} for r in history
        ]
        for key, value in whole_state.items():
            torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=0)
        assert resumed.kept == kept
        for key, value in whole.probe.state.items():  # the probe's copy comes back whole, bit for bit
            torch.testing.assert_close(resumed.probe.state[key], value, rtol=0, atol=0)
    # in the checkpoint, the blocks the fine-tune phase left alone are the model's own
    blocks, tuned = whole.model.blocks, whole.plan.phase("finetune").blocks
    frozen = tuple(f"backbone.{b}." for b in blocks[: len(blocks) - tuned])
    stored = ckpt["probe"]["state"]
    assert frozen and not [k for k in stored["changed"] if k.startswith(frozen)]
    assert [k for k in stored["changed"] if k.startswith("head.")]
    best = ckpt["best"]["state"]  # the best epoch's weights likewise (None: the checkpoint's own)
    assert best is None or not [k for k in best["changed"] if k.startswith(frozen)]


def test_saved_models_keep_their_freeze_state(weights: Path, tmp_path: Path) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    model.unfreeze()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert not uses_default_recipe(loaded)
    Trainer(loaded, progress=False, device="cpu")
    assert len(loaded.trainable_blocks) == 9


def test_default_trainable_blocks_grow_with_the_images_per_class_and_the_distance_from_imagenet() -> None:
    assert [default_trainable_blocks(b) for b in (2, 3, 9, 10, 17)] == [1, 1, 3, 3, 6]
    per_class = (None, 3, 9.9, 10, 50, 99.9, 100, 5000)
    assert [default_trainable_blocks(17, n) for n in per_class] == [6, 6, 6, 8, 8, 8, 13, 13]
    # measured near ImageNet, below 10 per class: a sixth (the images per class unknown: a third)
    assert [default_trainable_blocks(17, n, near=True) for n in per_class] == [6, 3, 3, 8, 8, 8, 13, 13]
    assert [default_trainable_blocks(b, 3, near=True) for b in (1, 2, 9, 22)] == [1, 1, 2, 4]
    assert default_trainable_blocks(9, 10) == 4
    assert [default_trainable_blocks(b, 100) for b in (1, 2, 9)] == [1, 2, 7]


def test_the_fine_tune_rate_triples_from_100_images_per_class(weights: Path) -> None:
    assert [default_finetune_lr(n) for n in (None, 3, 99.9, 100, 5000)] == [1e-3, 1e-3, 1e-3, 3e-3, 3e-3]
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    plans = {
        (per_class, lr): plan_recipe(
            "auto", model, _data(per_class, size=8), epochs=10, lr=lr, has_val=False, cacheable=True
        ).phase("finetune")
        for per_class in (99, 100)
        for lr in (None, 5e-4)
    }
    assert {key: (phase.lr, phase.blocks) for key, phase in plans.items()} == {
        (99, None): (1e-3, 4),
        (99, 5e-4): (5e-4, 4),  # a given lr is kept
        (100, None): (3e-3, 7),
        (100, 5e-4): (5e-4, 7),
    }


def test_cli_freeze_auto_leaves_the_model_to_the_recipe(weights: Path) -> None:
    spec = parse_freeze("auto")
    assert (spec.policy, spec.kwargs, spec.text) == ("auto", {}, "auto")
    model = build_model("resnet18", num_classes=2, pretrained=weights)
    spec.apply(model)
    assert len(model.trainable_blocks) == 9 and uses_default_recipe(model)
    chosen = build_model("resnet18", num_classes=2, pretrained=weights)
    parse_freeze("none").apply(chosen)
    assert not uses_default_recipe(chosen)


def test_lr_find_sweeps_the_fine_tune_phase_from_the_probes_softened_head(
    weights: Path, one_torch_thread
) -> None:
    model, data = build_model("resnet18", num_classes=2, pretrained=weights), _data(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probed = build_model("resnet18", num_classes=2, pretrained=weights)
    probed.load_state_dict(before)  # the same new head
    Trainer(probed, recipe="probe", seed=0, progress=False, device="cpu").fit(data)
    soften_head(probed, HEAD_TEMPERATURE)
    trainer = Trainer(model, seed=0, progress=False, device="cpu")
    seen = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append((len(model.trainable_blocks), {k: v.clone() for k, v in model.head.state_dict().items()}))
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.lr_find(data, steps=5)
    assert {blocks for blocks, _ in seen} == {2}  # a sixth, as the fine-tune phase on 3 near images per class
    torch.testing.assert_close(seen[0][1], probed.head.state_dict(), rtol=0, atol=0)  # the probe's, softened
    assert not torch.equal(seen[0][1]["fc.weight"], before["head.fc.weight"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # and everything back as it was
    assert len(model.trainable_blocks) == 9 and uses_default_recipe(model)


def test_resume_with_an_lr_names_the_default_the_run_had(tmp_path: Path) -> None:
    (tmp_path / "transferkit.json").write_text(json.dumps({"backbone": "resnet18", "data": "d", "lr": None}))
    given = argparse.Namespace(**{**dict.fromkeys(TRAIN_DEFAULTS), "lr": 1e-3})
    with pytest.raises(UsageError, match=r"--lr 0.001 \(the run has the default\)"):
        resumed_arguments(tmp_path, given)


def test_auto_probes_an_iterable_loader_without_caching(weights: Path, one_torch_thread) -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.randn(3, 32, 32), torch.tensor(i % 2)) for i in range(6)])

        def __len__(self) -> int:
            return 6

    trainer = Trainer(build_model("resnet18", num_classes=2, pretrained=weights), epochs=1, progress=False)
    history = trainer.fit(DataLoader(Stream(), batch_size=3))
    assert not trainer.plan.phases[0].cached and history[-1]["phase"] == "finetune"
