"""Export (ONNX through onnxruntime, torch.export, TorchScript) and sharing through a local Hub cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from transferkit import build_model, load_model
from transferkit.io.export import ExportError, export
from transferkit.io.hub import model_card

SIZE = 64
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
MODELS = {
    "resnet18": {"backbone": "resnet18"},
    "mobilenet_v3_small": {"backbone": "mobilenet_v3_small"},  # hardswish, squeeze-excitation, depthwise
    "timm/convnext_atto": {"backbone": "timm/convnext_atto"},
    "segmentation": {"backbone": "resnet18", "neck": "fpn_lite", "head": "fcn"},
}


def _model(spec: dict[str, str]):
    torch.manual_seed(0)
    return build_model(**spec, num_classes=3, pretrained=False).eval()


# resnet18 is the segmentation model's backbone here; its classifier is exported end to end (CLI, ONNX
# Runtime) in test_preprocessing.py and test_cli_extras.py
@pytest.fixture(scope="module", params=sorted(set(MODELS) - {"resnet18"}))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = _model(MODELS[request.param])
    folder = tmp_path_factory.mktemp("export")
    paths = {
        suffix: model.export(folder / f"model{suffix}", input_size=(SIZE, SIZE))
        for suffix in (".onnx", ".pt2", ".ts")
    }
    return model, paths


def _eager(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("batch", [1, 3])
def test_every_format_gives_the_eager_outputs(exported, batch: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, paths = exported
    x = torch.randn(batch, 3, SIZE, SIZE)
    expected = _eager(model, x)
    session = ort.InferenceSession(str(paths[".onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    program_out = torch.export.load(paths[".pt2"]).module()(x)
    script_out = torch.jit.load(str(paths[".ts"]))(x)
    for name, out in (("onnx", onnx_out), ("pt2", program_out), ("ts", script_out)):
        assert out.shape == expected.shape, name
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=name)


def test_export_keeps_the_train_mode_and_refuses_unknown_suffixes(tmp_path: Path) -> None:
    model = _model(MODELS["resnet18"]).train()
    with pytest.raises(ValueError, match=r"unknown suffix '\.tflite'.*\.onnx"):
        export(model, tmp_path / "model.tflite")
    export(model, tmp_path / "model.ts", input_size=(32, 32))
    assert model.training


def test_a_failing_exporter_names_the_format_and_the_alternatives(tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::weird\nlong trace")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with pytest.raises(ExportError, match=r"TorchScript export of torchvision/resnet18 .* aten::weird\. Try"):
        export(_model(MODELS["resnet18"]), tmp_path / "m.ts", input_size=(32, 32))


@pytest.mark.parametrize("suffix", [".pt2", ".ts"])
def test_torchvision_detection_heads_refuse_pt2_and_ts_before_any_exporter_runs(
    tmp_path: Path, suffix: str
) -> None:
    # they export to ONNX (tests/test_detection_export.py)
    model = build_model("resnet18", neck="fpn_lite", head="fcos", num_classes=3, pretrained=False)
    with pytest.raises(
        ExportError, match=r"cannot export this 'fcos' detection model .*Export this model to \.onnx"
    ):
        model.export(tmp_path / f"boxes{suffix}", input_size=(SIZE, SIZE))
    assert not list(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------------------------------ hub
COMMIT = "0" * 40


class _LocalHub:
    """Stands in for huggingface_hub.HfApi: an upload lands in the local Hub cache as a real one would."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> str:
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id: str, folder_path: str, commit_message: str) -> None:
        from huggingface_hub import constants

        repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder_path, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no test touches the network
    monkeypatch.setattr(huggingface_hub, "HfApi", _LocalHub)
    return tmp_path / "hub"


def test_push_then_load_offline_reproduces_predictions(local_hub: Path) -> None:
    model = _model(MODELS["segmentation"])
    history = [{"epoch": 0, "train_loss": 1.25, "val_loss": 1.5, "val_miou": 0.25}]
    url = model.push_to_hub("me/shapes-fcn", history=history)
    assert url == "https://huggingface.co/me/shapes-fcn"
    loaded = load_model("hf-hub:me/shapes-fcn")
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(_eager(loaded.eval(), x), _eager(model, x))
    card = (local_hub / "models--me--shapes-fcn" / "snapshots" / COMMIT / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and 'load_model("hf-hub:me/shapes-fcn")' in card
    assert "| mean | 0.4850, 0.4560, 0.4060 |" in card and "| classes (3) | 0, 1, 2 |" in card
    assert "| 1 | 1.2500 | 1.5000 | 0.2500 |" in card


def test_loading_a_repository_that_is_not_cached_offline_says_so(local_hub: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"cannot load hf-hub:me/never-downloaded: there is no network"
    ):
        load_model("hf-hub:me/never-downloaded")
    with pytest.raises(ValueError, match="org/name"):
        load_model("hf-hub:not-a-repo-id")


def test_model_card_names_the_preprocessing() -> None:
    card = model_card(_model(MODELS["resnet18"]))
    assert "pipeline_tag: image-classification" in card
    assert "| input size | 3 x 224 x 224 (channels, height, width) |" in card
    assert "## Training" not in card
