"""Damaged and foreign weights files (``pretrained=PATH``), hostile checkpoints, and the weights_only rule.

A weights file that cannot be used is a short ValueError that names the file and what to do; nothing in
the file is run and the file is left byte for byte as it was. No message, doc or comment of the project
tells anyone to load with ``weights_only`` turned off (that would run whatever code a file holds).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from transferkit import CheckpointError, Trainer, build_model
from transferkit.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NAME = "squeezenet1_0"  # a 5 MB state_dict: quick to write and to cut


class _RunsCode:
    def __reduce__(self):  # unpickling this would create a file: a stand-in for any code
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real weights files of the model (.safetensors, .pth) and of another one, as bytes."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = torchvision.models.get_model(NAME, weights=None).state_dict()
    save_file(state, str(folder / "w.safetensors"))
    torch.save(state, folder / "w.pth")
    torch.save(
        torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict(), folder / "o.pth"
    )
    return {name: (folder / name).read_bytes() for name in ("w.safetensors", "w.pth", "o.pth")}


def _lying_header(data: bytes) -> bytes:
    """The safetensors file with its first tensor claiming a gigabyte more bytes than the file holds."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"][1] += 2**30
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + size :]


def _half(name: str) -> Callable[[dict[str, bytes]], bytes]:
    return lambda good: good[name][: len(good[name]) // 2]


def _fixed(data: bytes) -> Callable[[dict[str, bytes]], bytes]:
    return lambda good: data


ST, PTH = "w.safetensors", "w.pth"
DAMAGED, NOT_RUN, NOT_A_STATE_DICT = "damaged", "nothing in it was run", "does not hold a state_dict"
# name: (file name, its bytes made from the good files, what the message says)
CASES: dict[str, tuple[str, Callable[[dict[str, bytes]], bytes], str]] = {
    "truncated .safetensors": (ST, _half(ST), DAMAGED),
    "truncated .pth": (PTH, _half(PTH), DAMAGED),
    "empty .pth": (PTH, _fixed(b""), DAMAGED),
    "empty .safetensors": (ST, _fixed(b""), DAMAGED),
    "random bytes .pth": (PTH, _fixed(random.Random(1).randbytes(4096)), PTH),
    "random bytes .safetensors": (ST, _fixed(random.Random(2).randbytes(4096)), DAMAGED),
    "safetensors header lying about sizes": (ST, lambda good: _lying_header(good[ST]), DAMAGED),
    "safetensors header longer than the file": (ST, _fixed(struct.pack("<Q", 10**12) + b"{}"), DAMAGED),
    "text, not weights .pth": (PTH, _fixed(b"not a weights file"), DAMAGED),
    "pickle with code .pth": (PTH, _fixed(pickle.dumps({"conv.weight": _RunsCode()})), NOT_RUN),
    "pickle with code .pt (protocol 2)": ("w.pt", _fixed(pickle.dumps([_RunsCode()], protocol=2)), NOT_RUN),
    "a list, not a state_dict": (PTH, lambda good: _torch_bytes([torch.zeros(1)]), NOT_A_STATE_DICT),
    "a dict of non-tensors": (PTH, lambda good: _torch_bytes({"epoch": 3, "lr": 0.1}), NOT_A_STATE_DICT),
    "another model's state_dict": (PTH, lambda good: good["o.pth"], "does not fit this model"),
}


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("case", CASES)
def test_damaged_or_foreign_weights_file_is_a_short_error_naming_it(
    case: str, good: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the code in the pickles would leave its mark
    name, make, says = CASES[case]
    path = tmp_path / name
    path.write_bytes(make(good))
    before = path.read_bytes()
    with pytest.raises(ValueError) as info:
        with torch.device("meta"):
            build_model(NAME, num_classes=2, pretrained=path)
    message = str(info.value)
    assert str(path) in message and says in message, message
    assert "weights_only" not in message and len(message) < 700, message
    assert path.read_bytes() == before, "the file was changed"
    assert not (tmp_path / "pwned").exists(), "code from the file ran"


# ------------------------------------------------------------------------------ hostile checkpoints
@pytest.fixture(scope="module")
def checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict, torch.nn.Module, torch.optim.Optimizer]:
    """A real checkpoint's contents, and the model and optimizer it fits."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", num_classes=3, pretrained=False)
    model.freeze()
    train = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))), batch_size=4)
    trainer = Trainer(model, epochs=1, checkpoint_dir=folder, progress=False)
    trainer.fit(train)
    return torch.load(folder / "last.pt", weights_only=True), model, trainer.optimizer


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_are_a_checkpoint_error(seed: int, checkpoint: tuple, tmp_path: Path) -> None:
    """Random bytes after a pickle or zip magic number: torch fails deep inside (IndexError, KeyError)."""
    _, model, optimizer = checkpoint
    rng = random.Random(seed)
    path = tmp_path / "last.pt"
    path.write_bytes(rng.choice([b"\x80\x02", b"PK\x03\x04", b""]) + rng.randbytes(rng.choice([3, 64, 2000])))
    with pytest.raises(CheckpointError, match="cannot resume from"):
        read_checkpoint(path, model, optimizer)


WRONG_ENTRIES = {
    "epoch": "3",
    "model": torch.zeros(3),
    "optimizer": [1, 2],
    "history": {"epoch": 0},
    "rng": {},
    "freeze": None,
    "plan": {"recipe": "auto", "phases": [{"name": "probe"}], "select": True},  # a phase without epochs
}


@pytest.mark.parametrize("key", WRONG_ENTRIES)
def test_checkpoint_with_every_key_but_a_wrong_entry_is_refused_before_anything_changes(
    key: str, checkpoint: tuple, tmp_path: Path
) -> None:
    ckpt, model, optimizer = checkpoint
    torch.save({**ckpt, key: WRONG_ENTRIES[key]}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=f"its {key} entry is not what a transferkit Trainer writes"):
        read_checkpoint(tmp_path / "last.pt", model, optimizer)


@pytest.mark.parametrize(
    "kept, says",  # the best epoch's weights, stored beside the model's
    [
        ({"unchanged": ["backbone.nowhere.weight"], "changed": {}}, "names 'backbone.nowhere.weight', which"),
        ({"unchanged": 3, "changed": {}}, "is neither names nor tensors"),
        ({"unchanged": [], "changed": {"head.fc.weight": "x"}}, "is neither names nor tensors"),
    ],
)
def test_a_damaged_kept_copy_is_refused_before_anything_changes(
    kept: dict, says: str, checkpoint: tuple, tmp_path: Path
) -> None:
    ckpt, model, optimizer = checkpoint
    torch.save({**ckpt, "best": {**ckpt["best"], "state": kept}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=f"cannot resume from .*{says}"):
        read_checkpoint(tmp_path / "last.pt", model, optimizer)


# ------------------------------------------------------------------------------- the weights_only rule
def test_nothing_in_the_project_advises_turning_weights_only_off() -> None:
    texts = [*(ROOT / "transferkit").rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    advice = re.compile(r"weights_only\s*=\s*False")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in texts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if advice.search(line)
    ]
    assert len(texts) > 20 and not found, f"weights_only=False appears in {found}"
