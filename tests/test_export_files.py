"""Export files: written whole or not at all, never through a symbolic link, never over a file unasked.

``model.export`` exports into a temporary sibling and renames it, so a failed export keeps the earlier
file; ``transferkit export`` replaces an existing ``--out`` only with ``--overwrite``; an ONNX model big
enough for an external data file gets it beside the model, under the name the model file reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import run

from transferkit import build_model
from transferkit.io.export import ExportError

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    build_model("resnet18", num_classes=2, pretrained=False).save(folder)
    return folder


def test_export_replaces_an_existing_out_only_with_overwrite(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.ts"
    out.write_bytes(b"precious")
    refused = run("export", "--model", saved, "--out", out, "--image-size", SIZE)
    assert refused.code == 1
    assert f"--out {out} exists; pass --overwrite to replace it" in refused.err
    assert out.read_bytes() == b"precious"
    replaced = run("export", "--model", saved, "--out", out, "--image-size", SIZE, "--overwrite")
    assert replaced.code == 0, replaced.err
    assert torch.jit.load(str(out))(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]  # no temp file left


def test_export_never_writes_through_a_symbolic_link(saved: Path, tmp_path: Path) -> None:
    victim, link = tmp_path / "victim.ts", tmp_path / "model.ts"
    victim.write_bytes(b"precious")
    link.symlink_to(victim)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    with pytest.raises(FileExistsError, match="it is a symbolic link"):
        model.export(link, input_size=(SIZE, SIZE))
    refused = run("export", "--model", saved, "--out", link, "--image-size", SIZE, "--overwrite")
    assert refused.code == 1
    assert f"{link}: it is a symbolic link (to {victim})" in refused.err
    assert victim.read_bytes() == b"precious" and link.is_symlink()


def test_a_failed_export_keeps_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("resnet18", num_classes=2, pretrained=False)
    out = model.export(tmp_path / "model.ts", input_size=(SIZE, SIZE))
    before = out.read_bytes()

    def cut_short(module: object, path: str, **kwargs: object) -> None:  # as a full disk stops it, halfway
        Path(path).write_bytes(before[: len(before) // 2])
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch.jit, "save", cut_short)
    with pytest.raises(ExportError, match="file write failed"):
        model.export(out, input_size=(SIZE, SIZE))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]


def test_onnx_data_file_lands_beside_the_model_and_a_failed_export_keeps_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over torch.onnx's size limit the weights go to NAME.onnx.data, which the model file names."""
    ort = pytest.importorskip("onnxruntime")
    from torch.onnx._internal.exporter import _onnx_program

    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)  # as if the model were over 1.5 GB
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, pretrained=False).eval()
    path = model.export(tmp_path / "model.onnx", input_size=(SIZE, SIZE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    x = torch.randn(2, 3, SIZE, SIZE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x)
    onnx_out = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(onnx_out, expected, atol=1e-4, rtol=1e-4)

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def cut_short(program: object, destination: str, **kwargs: object) -> None:  # a full disk, halfway
        Path(f"{destination}.data").write_bytes(b"half the weights")
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(_onnx_program.ONNXProgram, "save", cut_short)
    with pytest.raises(ExportError, match="No space left on device"):
        model.export(path, input_size=(SIZE, SIZE))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # and no temp folder left
