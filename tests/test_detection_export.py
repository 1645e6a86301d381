"""Detection models export with decoding and NMS inside the file and fixed-size outputs per image.

The ONNX file, run by onnxruntime, gives the eager model's detections (``model.eval()(x)``): boxes within
1e-2 px, scores within 1e-4, the same labels, zero rows after ``count``. The YOLO head (batched
post-processing) exports with a dynamic batch to ONNX, ``.pt2`` and ``.ts``; torchvision's heads export to
ONNX for one image at a time and refuse the other formats, naming what can.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
from cli_runner import run

import transferkit.io.export_detection
import transferkit.models.heads.detection.parts
from transferkit import FeatureInfo, build_model, load_model
from transferkit.io.export import ExportError
from transferkit.io.export_spec import preprocessing_spec, read_preprocessing
from transferkit.models.heads.detection import YOLOHead

ort = pytest.importorskip("onnxruntime")

SIZE = 64
ROWS = 100  # the heads' detections_per_img
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),
    # torchvision's shape function for NMS calls torch by a deprecated name (model.export hides it)
    pytest.mark.filterwarnings("ignore:`create_unbacked_symint` is deprecated:FutureWarning"),
    # torchvision's RoI heads index with a tensor; the exporter warns for negative indices, which they lack
    pytest.mark.filterwarnings("ignore:Exporting aten..index operator:UserWarning"),
]


def _model(head: str, neck: str = "fpn_lite", **head_kwargs: float) -> torch.nn.Module:
    """A detector whose head keeps every box NMS keeps (``score_thresh`` 0), with its scores spread apart.

    An untrained head gives every class about its prior's score: ties to 1e-8, which two runtimes may
    order differently. Noise on the head's weights spreads the scores, so the order is the model's own.
    A strict NMS leaves yolo and ssdlite fewer detections than rows (fcos, retinanet and fasterrcnn fill
    them), so both the detections and the zero rows after them are compared.
    """
    torch.manual_seed(0)
    head_kwargs = {"score_thresh": 0.0, "nms_thresh": 0.1, **head_kwargs}
    model = build_model(
        "resnet18", neck=neck, head=head, num_classes=3, pretrained=False, head_kwargs=head_kwargs,
        data_config={"input_size": (3, SIZE, SIZE)},
    )  # fmt: skip
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _assert_same(outputs, eager: list[dict[str, torch.Tensor]]) -> None:
    """``outputs`` (boxes, scores, labels, count: arrays or tensors) hold the ``eager`` detections."""
    boxes, scores, labels, count = (torch.as_tensor(o) for o in outputs)
    batch = len(eager)
    assert boxes.shape == (batch, ROWS, 4) and scores.shape == labels.shape == (batch, ROWS)
    assert labels.dtype == count.dtype == torch.int64 and count.shape == (batch,)
    for i, detections in enumerate(eager):
        n = int(count[i])
        assert n == len(detections["scores"]) > 0  # detections to compare, not zero against zero
        torch.testing.assert_close(boxes[i, :n], detections["boxes"], atol=1e-2, rtol=0)
        torch.testing.assert_close(scores[i, :n], detections["scores"], atol=1e-4, rtol=0)
        assert torch.equal(labels[i, :n], detections["labels"])
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not labels[i, n:].any()


def _eager(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model(x)


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("head, neck", [("yolo", "fpn_lite"), ("yolo", "identity")])
def test_yolo_onnx_gives_the_eager_detections_for_any_batch(tmp_path: Path, head: str, neck: str) -> None:
    model = _model(head, neck)
    path = model.export(tmp_path / "boxes.onnx")
    spec = read_preprocessing(path)
    assert spec["input"]["shape"] == ["N", 3, SIZE, SIZE]
    assert spec["outputs"]["boxes"] == {"shape": ["N", ROWS, 4], "dtype": "float32"}
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "count"]
    for batch in (2, 1):
        x = torch.randn(batch, 3, SIZE, SIZE)
        _assert_same(session.run(None, {"x": x.numpy()}), _eager(model, x))


@pytest.mark.parametrize("head", ["fcos", "retinanet", "ssdlite", "fasterrcnn"])
def test_torchvision_heads_onnx_gives_the_eager_detections_one_image_at_a_time(
    tmp_path: Path, head: str
) -> None:
    model = _model(head)
    path = model.export(tmp_path / "boxes.onnx")
    spec = read_preprocessing(path)
    assert spec["input"]["shape"] == [1, 3, SIZE, SIZE] and spec["outputs"]["count"]["shape"] == [1]
    session = _session(path)
    x = torch.randn(1, 3, SIZE, SIZE)
    _assert_same(session.run(None, {"x": x.numpy()}), _eager(model, x))
    with pytest.raises(Exception, match=r"invalid dimensions for input: x[\s\S]*Got: 2 Expected: 1"):
        session.run(None, {"x": torch.randn(2, 3, SIZE, SIZE).numpy()})


@pytest.mark.parametrize("score_thresh, kept", [(1.0, 0), (0.0, 5)])
def test_a_yolo_program_runs_whatever_the_number_of_boxes_nms_keeps(score_thresh: float, kept: int) -> None:
    """torchvision's shape function for NMS promises two kept boxes or more, which a program asserts when
    it runs; the head's NMS never lets it keep fewer (a small head alone: the same post-processing)."""
    head = YOLOHead(
        FeatureInfo((32, 64), (8, 16)), num_classes=2, score_thresh=score_thresh, detections_per_img=5
    )
    features = [torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)]

    class Fixed(torch.nn.Module):
        def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return head.detect_fixed([fine, coarse], (SIZE, SIZE))

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(Fixed().eval(), tuple(features), dynamic_shapes=({0: batch}, {0: batch}))
    with torch.no_grad():
        for n in (2, 3):
            maps = [torch.randn(n, *f.shape[1:]) for f in features]
            outputs, expected = program.module()(*maps), head.eval().detect_fixed(maps, (SIZE, SIZE))
            assert outputs[3].tolist() == [kept] * n
            assert all(torch.equal(a, b) for a, b in zip(outputs, expected))


def test_yolo_program_with_normalisation_inside_gives_the_eager_detections(tmp_path: Path) -> None:
    model = _model("yolo").train()
    path = model.export(tmp_path / "boxes.pt2", normalize_in_graph=True)
    assert model.training  # the model's mode is kept
    images = torch.rand(3, 3, SIZE, SIZE)  # scaled to [0, 1]: the file normalises them
    mean, std = (torch.tensor(model.data_config[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        outputs = torch.export.load(path).module()(images)
    _assert_same(outputs, _eager(model.eval(), (images - mean) / std))


def test_yolo_torchscript_gives_the_eager_detections(tmp_path: Path) -> None:
    model = _model("yolo", "identity")
    path = model.export(tmp_path / "boxes.ts")
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        _assert_same(torch.jit.load(str(path))(x), _eager(model, x))
    assert read_preprocessing(path)["outputs"]["labels"]["dtype"] == "int64"


@pytest.mark.parametrize("head, suffix", [("retinanet", ".pt2"), ("ssdlite", ".ts"), ("fasterrcnn", ".pt2")])
def test_torchvision_heads_refuse_other_formats_naming_what_exports(
    tmp_path: Path, head: str, suffix: str
) -> None:
    model = build_model("resnet18", neck="fpn_lite", head=head, num_classes=3, pretrained=False)
    with pytest.raises(
        ExportError, match=rf"'{head}' detection model .*head='yolo'.* Export this model to .onnx"
    ):
        model.export(tmp_path / f"boxes{suffix}", input_size=(SIZE, SIZE))
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("head", ["yolo", "ssdlite"])
def test_images_without_detections_give_count_zero_and_zero_rows(tmp_path: Path, head: str) -> None:
    model = _model(head, score_thresh=1.0)  # no score reaches it
    x = torch.randn(2 if head == "yolo" else 1, 3, SIZE, SIZE)
    boxes, scores, labels, count = _session(model.export(tmp_path / "boxes.onnx")).run(None, {"x": x.numpy()})
    assert count.tolist() == [0] * len(x) and not boxes.any() and not scores.any() and not labels.any()
    assert all(len(d["boxes"]) == 0 for d in _eager(model, x))


def test_the_command_line_exports_a_detection_run_and_states_the_outputs(tmp_path: Path) -> None:
    model = _model("yolo")
    model.classes = ["circle", "square", "triangle"]
    model.save(tmp_path / "run")
    out_file = tmp_path / "boxes.onnx"
    code, out, err = run("export", "--model", tmp_path / "run", "--out", out_file, "--normalize-in-graph")
    assert code == 0, err
    assert "x float32 [N, 3, 64, 64]; the file normalises itself" in out
    assert "its outputs: boxes float32 [N, 100, 4] (x1, y1, x2, y2 in input pixels); scores" in out
    spec = read_preprocessing(out_file)
    assert spec["classes"] == ["circle", "square", "triangle"] and spec["normalize_in_graph"]
    images = torch.rand(2, 3, SIZE, SIZE)  # scaled to [0, 1]: the file normalises them
    mean, std = (torch.tensor(spec[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    outputs = _session(out_file).run(None, {"x": images.numpy()})
    _assert_same(outputs, _eager(load_model(tmp_path / "run").eval(), (images - mean) / std))


def test_a_torchvision_head_detect_fixed_pads_the_eager_detections() -> None:
    model = _model("retinanet", detections_per_img=7)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        fixed = model.head.detect_fixed(model.neck(model.backbone(x)), (SIZE, SIZE))
    assert [tuple(t.shape) for t in fixed] == [(2, 7, 4), (2, 7), (2, 7), (2,)]
    eager = _eager(model, x)
    for i, detections in enumerate(eager):
        assert int(fixed[3][i]) == len(detections["boxes"]) == 7
        assert torch.equal(fixed[0][i], detections["boxes"]) and torch.equal(
            fixed[2][i], detections["labels"]
        )


@pytest.mark.parametrize(
    "module", [transferkit.io.export_detection, transferkit.models.heads.detection.parts]
)
def test_doctests_hold(module) -> None:
    extras = {"build_model": build_model, "preprocessing_spec": preprocessing_spec}
    assert doctest.testmod(module, extraglobs=extras, optionflags=doctest.ELLIPSIS).failed == 0
