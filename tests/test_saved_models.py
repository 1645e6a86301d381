"""A saved model folder: nothing in it runs code, it is one atomic unit, and damage is named.

The attacks here come from a review of the saved-model format: configs that point a backbone library at
a pickle, saves that race loads, kills inside a save, fuzzed files, and Ctrl-C inside a write.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from benchmark_modules import load_benchmark
from safetensors.torch import save_file

import transferkit as tk
from transferkit.atomic import atomic_write
from transferkit.training.checkpoint import atomic_save

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(classes: list[str] | None = None, backbone: str = "resnet18") -> tk.TransferModel:
    return tk.build_model(backbone, num_classes=2, pretrained=False, classes=classes or ["cat", "dog"])


class _Payload:
    """A pickle that creates ``marker`` when it is unpickled: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def _pickle_bomb(tmp_path: Path) -> tuple[Path, Path]:
    marker, bomb = tmp_path / "code-ran", tmp_path / "weights.pth"
    with open(bomb, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f, protocol=2)
    return bomb, marker


def _legacy_folder(tmp_path: Path, config: Any) -> Path:
    """A folder as older versions saved it: config.json beside weights that carry no config."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    model = _model()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ------------------------------------------------------------------------------------- code execution
@pytest.mark.parametrize(
    "kwargs",
    [
        lambda bomb: {"checkpoint_path": str(bomb)},
        lambda bomb: {"pretrained_cfg_overlay": {"file": str(bomb)}},
        lambda bomb: {"pretrained_cfg": {"file": str(bomb), "architecture": "resnet18"}},
    ],
    ids=["checkpoint_path", "pretrained_cfg_overlay", "pretrained_cfg"],
)
def test_a_config_cannot_point_timm_at_a_pickle(tmp_path: Path, kwargs: Any) -> None:
    bomb, marker = _pickle_bomb(tmp_path)
    config = {**_model(backbone="timm/resnet18").config, "backbone_kwargs": kwargs(bomb)}
    folder = _legacy_folder(tmp_path, config)
    key = next(iter(kwargs(bomb)))
    with pytest.raises(ValueError, match=f"config.json: field 'backbone_kwargs'.*{key}") as err:
        tk.load_model(folder)
    assert "weights_only=False" not in str(err.value)
    with pytest.raises(ValueError, match=f"may not hold {key}"):
        tk.build_model("timm/resnet18", num_classes=2, pretrained=False, backbone_kwargs=kwargs(bomb))
    assert not marker.exists(), "the pickle ran"


def test_a_config_inside_the_weights_is_checked_too(tmp_path: Path) -> None:
    bomb, marker = _pickle_bomb(tmp_path)
    model = _model(backbone="timm/resnet18")
    config = {**model.config, "backbone_kwargs": {"checkpoint_path": str(bomb)}}
    (tmp_path / "m").mkdir()
    save_file(
        model.state_dict(), str(tmp_path / "m" / "model.safetensors"), metadata={"config": json.dumps(config)}
    )
    with pytest.raises(ValueError, match="model.safetensors \\(its config\\): field 'backbone_kwargs'"):
        tk.load_model(tmp_path / "m")
    assert not marker.exists()


def test_a_layer_name_in_a_config_is_checked(tmp_path: Path) -> None:
    config = {**_model(backbone="timm/resnet18").config, "backbone_kwargs": {"act_layer": "os.system"}}
    with pytest.raises(ValueError, match="act_layer='os.system' is not a layer name timm knows"):
        tk.load_model(_legacy_folder(tmp_path, config))


def test_unknown_backbone_kwargs_are_refused_with_close_matches() -> None:
    with pytest.raises(ValueError, match="'drop_path_rat'.*did you mean drop_path_rate"):
        tk.build_model(
            "timm/resnet18", num_classes=2, pretrained=False, backbone_kwargs={"drop_path_rat": 0.1}
        )


def test_timm_is_pinned_to_a_version_that_never_unpickles_code() -> None:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"timm>=1.0.28"' in text


# --------------------------------------------------------------------------------- one atomic unit
def test_load_pairs_weights_with_their_own_config(tmp_path: Path) -> None:
    # the moment a save has replaced the weights but not yet config.json (or a kill -9 right there)
    old, new = _model(["cat", "dog"]), _model(["dog", "cat"])
    with torch.no_grad():
        new.head.fc.bias.copy_(torch.tensor([5.0, -5.0]))
    old.save(tmp_path / "a")
    new.save(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_bytes((tmp_path / "a" / "config.json").read_bytes())
    loaded = tk.load_model(tmp_path / "b")
    assert loaded.classes == ["dog", "cat"]
    assert torch.equal(loaded.head.fc.bias, new.head.fc.bias)


def test_loads_during_saves_are_never_torn(tmp_path: Path) -> None:
    # benchmarks/attack_runs.py's attack (100 loads there, 15 here): one process saves two models in turn
    attack = load_benchmark("attack_runs")
    assert attack.save_while_load(tmp_path, loads=15) == {"loads": 15, "torn": 0, "errors": 0}


def test_a_save_removes_the_temp_file_a_killed_save_left(tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path)
    stale = tmp_path / ".model.safetensors.0badc0de.tmp"
    stale.write_bytes(b"x" * 1000)  # what kill -9 inside a save leaves
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="the writer's lock is a POSIX flock")
def test_a_temp_file_being_written_is_left_alone(tmp_path: Path) -> None:
    import fcntl

    busy = tmp_path / ".model.safetensors.feedface.tmp"
    with open(busy, "wb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process's save in progress
        _model().save(tmp_path)
        assert busy.exists()


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_saved_files_are_readable_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _model().save(tmp_path)
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_save_never_writes_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"precious")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").symlink_to(target)
    with pytest.raises(FileExistsError, match="symbolic link"):
        _model().save(tmp_path / "m")
    assert target.read_bytes() == b"precious"


# ------------------------------------------------------------------------------------ fuzzed files
def _valid_config() -> dict[str, Any]:
    return json.loads(json.dumps(_model().config))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2]", "holds a JSON list"),
        ('{"backbone": "torchvision/resnet18"', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (lambda c: {**c, "num_classes": 10**12}, "'num_classes' must be an int from 1 to 100000"),
        (lambda c: {**c, "num_classes": "2"}, "'num_classes' must be int"),
        (lambda c: {**c, "num_classes": True}, "'num_classes' must be int"),
        (lambda c: {k: v for k, v in c.items() if k != "num_classes"}, "'num_classes' is missing"),
        (lambda c: {**c, "surprise": 1}, "'surprise' is not one transferkit writes"),
        (lambda c: {**c, "in_chans": 10**9}, "'in_chans' must be an int from 1 to 1024"),
        (lambda c: {**c, "backbone_kwargs": []}, "'backbone_kwargs' must be dict"),
        (lambda c: {**c, "classes": [1, 2]}, "'classes' must be a list of strs"),
        (lambda c: {**c, "backbone": "torchvision/resnet999"}, "cannot build.*resnet999"),
        (lambda c: {**c, "neck_kwargs": {"out_channels": "x" * 5}}, "cannot build"),
    ],
)
def test_a_damaged_config_names_the_file_and_the_field(tmp_path: Path, content: Any, match: str) -> None:
    if callable(content):
        content = json.dumps(content(_valid_config()))
    folder = _legacy_folder(tmp_path, {})
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match) as err:
        tk.load_model(folder)
    assert "config.json" in str(err.value)


def test_a_config_without_pretrained_loads(tmp_path: Path) -> None:
    config = {k: v for k, v in _valid_config().items() if k != "pretrained"}
    assert tk.load_model(_legacy_folder(tmp_path, config)).classes == ["cat", "dog"]


@pytest.mark.parametrize("cut", [0, 7, 200, -1000])
def test_damaged_weights_name_the_file(tmp_path: Path, cut: int) -> None:
    _model().save(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="model.safetensors: it is truncated or damaged|does not fit"):
        tk.load_model(tmp_path)
    assert weights.read_bytes() == data[:cut]


def test_weights_of_another_model_name_the_file(tmp_path: Path) -> None:
    _model().save(tmp_path / "a")
    tk.build_model("resnet34", num_classes=2, pretrained=False).save(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").unlink()
    save_file(tk.load_model(tmp_path / "b").state_dict(), str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ValueError, match="does not fit the model its config describes: tensors .*unexpected"):
        tk.load_model(tmp_path / "a")


# --------------------------------------------------------------------------------- Ctrl-C in a write
def _interrupting(write_rest: Any) -> Any:
    """A write that gets Ctrl-C halfway through."""

    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"half")
            os.kill(os.getpid(), signal.SIGINT)
            f.write(b" and the rest")
        write_rest(path)

    return write


def test_ctrl_c_inside_a_write_lands_after_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, _interrupting(lambda p: None))
    assert path.read_bytes() == b"half and the rest"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_ctrl_c_inside_a_checkpoint_write_leaves_a_whole_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK")  # torch's writer is mid-file when the signal lands
        f.seek(0)
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    path = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 3}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 3}
    assert os.listdir(tmp_path) == ["last.pt"]
