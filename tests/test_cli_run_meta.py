"""A run folder's ``transferkit.json``: written whole or not at all, and checked where it is read.

A write cut short (a real file-size limit, as a full disk or ``kill -9`` would cut it) must leave the
previous file as it was; a damaged or edited file must be an error naming the file, the field and the
fix, from every command that reads it, never a raw ``KeyError`` or ``JSONDecodeError``.
"""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run

from transferkit import build_model
from transferkit.cli.runs import _read_meta, _write_meta
from transferkit.data import make_shapes_folder

META = "transferkit.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A saved model folder (its transferkit.json is written by each test) and an image to predict."""
    folder = tmp_path_factory.mktemp("run")
    build_model("resnet18", num_classes=2, classes=["a", "b"], pretrained=False).save(folder)
    data = make_shapes_folder(
        tmp_path_factory.mktemp("data") / "shapes", num_classes=2, per_class={"train": 1}, image_size=32
    )
    return folder, next(data.rglob("*.jpg"))


def _meta(**fields: Any) -> dict[str, Any]:
    """A transferkit.json as ``transferkit train`` writes it, with ``fields`` changed."""
    meta = {
        "task": "classification", "classes": ["a", "b"], "data": "/data/shapes", "backbone": "resnet18",
        "neck": "identity", "head": "linear", "pretrained": False, "freeze": "all", "epochs": 2,
        "lr": None, "batch_size": 4, "image_size": 32, "seed": 0, "augment": "light", "mixup": 0.0,
        "cutmix": 0.0, "label_smoothing": 0.0, "log": "csv", "transferkit_version": "0.1.0",
        "status": "training",
    }  # fmt: skip
    return {**meta, **fields}


def test_a_meta_write_cut_short_keeps_the_previous_file(tmp_path: Path) -> None:
    """A real write failure (RLIMIT_FSIZE) halfway through the new transferkit.json."""
    old = _meta(status="done", best_epoch=1)
    _write_meta(tmp_path, old)
    bigger = _meta(classes=[f"class {i:05d}" for i in range(2000)])  # ~30 KB, past the limit below
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))
    try:
        with pytest.raises(OSError):
            _write_meta(tmp_path, bigger)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert _read_meta(tmp_path) == old  # not a truncated file: the run still resumes and predicts
    assert sorted(p.name for p in tmp_path.iterdir()) == [META], "a temp file was left behind"
    _write_meta(tmp_path, bigger)
    assert _read_meta(tmp_path) == bigger


DAMAGED = {
    "a list": (b"[1, 2]", "holds a JSON array, not the object"),
    "a wrong type": (
        json.dumps(_meta(image_size="big")).encode(),
        "field 'image_size' must be a whole number",
    ),
    "names that are not a list": (json.dumps(_meta(classes="ab")).encode(), "field 'classes' must be a list"),
    "a negative rate": (json.dumps(_meta(lr=-1)).encode(), "field 'lr' must be a finite number > 0"),
    "an unknown field": (b'{"colour": "red"}', "field 'colour' is not one transferkit writes"),
    "truncated JSON": (json.dumps(_meta()).encode()[:70], "is not valid JSON"),
    "non-UTF-8 bytes": (b'{"task": "\xff\xfe"}', "is not UTF-8 text"),
    "deep nesting": (b"[" * 100_000, "nests its JSON too deeply"),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
@pytest.mark.parametrize("command", ["predict", "export", "resume"])
def test_a_damaged_transferkit_json_names_the_file_and_the_field(
    saved: tuple[Path, Path], tmp_path: Path, name: str, command: str
) -> None:
    folder, image = saved
    content, expected = DAMAGED[name]
    (folder / META).write_bytes(content)
    argv = {
        "predict": ["predict", "--model", folder, image],
        "export": ["export", "--model", folder, "--out", tmp_path / "model.ts"],
        "resume": ["train", "--resume", "--out", folder],
    }[command]
    result = run(*argv)
    assert result.code == 1, result
    assert f"{folder / META}" in result.err and expected in result.err, result.err
    assert "Traceback" not in result.err and len(result.err.splitlines()) == 1
    assert (folder / META).read_bytes() == content  # the file is left as it was
    assert not (tmp_path / "model.ts").exists()


def test_resume_names_the_field_a_run_lacks(saved: tuple[Path, Path]) -> None:
    folder, _ = saved
    (folder / META).write_text(json.dumps({k: v for k, v in _meta().items() if k != "backbone"}))
    result = run("train", "--resume", "--out", folder)
    assert result.code == 1
    assert "lacks the field 'backbone'" in result.err and "start one without --resume" in result.err
