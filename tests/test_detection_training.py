"""Detection through the Trainer and the model: history keys, COCO mAP against the backend itself, bad
targets that name the sample and leave the weights alone, freezing that holds (``bn="frozen_all"``
included), the refused feature cache, predictions in the image's own pixels, and learning."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from transferkit import Trainer, build_model
from transferkit.data import SyntheticShapesDetection
from transferkit.tasks import get_task
from transferkit.tasks.detection_metrics import DetectionMeter
from transferkit.viz import show_predictions

SIZE = 64
TASK = get_task("detection")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(head: str = "fcos", **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("pretrained", False)
    head_kwargs = {"representation_size": 32, "proposals": [32, 16]} if head == "fasterrcnn" else None
    return build_model(
        "resnet18", neck="fpn_lite", head=head, num_classes=3, neck_kwargs={"out_channels": 64},
        head_kwargs=head_kwargs, **kwargs,
    )  # fmt: skip


def _loader(n: int = 4, seed: int = 0, batch_size: int = 2, **kwargs) -> DataLoader:
    shapes = SyntheticShapesDetection(n, image_size=SIZE, seed=seed, **kwargs)
    return DataLoader(shapes, batch_size=batch_size, collate_fn=TASK.collate_fn)


class _Bad(torch.utils.data.Dataset):
    """Good batches, then one whose second image carries ``target``."""

    def __init__(self, target, good_batches: int = 1) -> None:
        self.target, self.good = target, good_batches

    def __len__(self) -> int:
        return 2 * (self.good + 1)

    def __getitem__(self, i: int):
        image, good = SyntheticShapesDetection(1, image_size=SIZE)[0]
        return image, self.target if i == len(self) - 1 else good


# --------------------------------------------------------------------------------------- the Trainer
def test_fit_logs_each_loss_part_and_coco_map_without_a_val_loss() -> None:
    model = _model("fasterrcnn")
    history = Trainer(model, epochs=1, progress=False).fit({"train": _loader(), "val": _loader(seed=1)})
    row = history[0]
    parts = {"train_loss_objectness", "train_loss_rpn_box_reg", "train_loss_classifier", "train_loss_box_reg"}
    assert parts <= set(row) and "val_loss" not in row
    assert row["train_loss"] == pytest.approx(sum(row[p] for p in parts), rel=1e-5)
    assert 0.0 <= row["val_map"] <= row["val_map_50"] <= 1.0
    predictions = Trainer(model, progress=False).predict(_loader(n=3, seed=1))
    assert len(predictions) == 3 and all(p["boxes"].shape[1:] == (4,) for p in predictions)


def test_images_may_come_as_a_list_of_different_sizes() -> None:
    images = [torch.randn(3, 64, 48), torch.randn(3, 40, 64)]
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    model = _model("ssdlite")
    Trainer(model, epochs=1, progress=False).fit([(images, targets)])
    assert Trainer(model, progress=False).evaluate([(images, targets)]).keys() == {"map", "map_50"}


def _coco_reference(predictions, targets) -> tuple[float, float]:
    """mAP and mAP@0.5 from faster-coco-eval's COCOeval directly, boxes as COCO's [x, y, w, h]."""
    from faster_coco_eval import COCO, COCOeval_faster

    def xywh(box):
        x1, y1, x2, y2 = box
        return [x1, y1, x2 - x1, y2 - y1]

    images = [{"id": i, "width": SIZE, "height": SIZE} for i in range(len(targets))]
    annotations = [
        {"id": len(images) * 100 + i * 10 + j, "image_id": i, "category_id": int(label), "bbox": xywh(box),
         "area": xywh(box)[2] * xywh(box)[3], "iscrowd": 0}
        for i, t in enumerate(targets) for j, (box, label) in enumerate(zip(t["boxes"].tolist(), t["labels"]))
    ]  # fmt: skip
    truth = COCO()
    truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k} for k in range(3)],
    }
    truth.createIndex()
    found = [
        {"image_id": i, "category_id": int(label), "bbox": xywh(box), "score": float(score)}
        for i, p in enumerate(predictions)
        for box, score, label in zip(p["boxes"].tolist(), p["scores"], p["labels"])
    ]
    evaluation = COCOeval_faster(truth, truth.loadRes(found), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def test_val_map_equals_the_coco_reference_on_fixed_predictions() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = [SyntheticShapesDetection(6, image_size=SIZE, seed=2)[i][1] for i in range(6)]
    predictions = []
    for t in targets:  # the truth jittered, some labels wrong, plus a few random boxes
        noisy = t["boxes"] + torch.randn(t["boxes"].shape, generator=generator) * 2
        extra = torch.rand(2, 2, generator=generator) * 40
        boxes = torch.cat([noisy, torch.cat([extra, extra + 15], 1)]).clamp(0, SIZE)
        labels = torch.cat([t["labels"], torch.randint(0, 3, (2,), generator=generator)])
        labels[0] = (labels[0] + int(torch.randint(0, 2, (), generator=generator))) % 3
        predictions.append(
            {"boxes": boxes, "labels": labels, "scores": torch.rand(len(boxes), generator=generator)}
        )
    meter = DetectionMeter()
    meter.update(predictions[:3], targets[:3])
    meter.update(predictions[3:], targets[3:])
    ours = meter.compute()
    reference = _coco_reference(predictions, targets)
    assert 0.1 < ours["map_50"] < 1.0
    assert (ours["map"], ours["map_50"]) == pytest.approx(reference, abs=1e-6)


# -------------------------------------------------------------------------------------------- bad input
GOOD = {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])}


def _target(box: list[float], label: int) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor([box]), "labels": torch.tensor([label])}


WHERE = "epoch 1, batch 2, image 1"


@pytest.mark.parametrize(
    "target, match",
    [
        (_target([10.0, 2.0, 5.0, 20.0], 1), rf"box 0 of {WHERE} .*x2 <= x1"),
        (_target([2.0, 2.0, 20.0, 80.0], 1), rf"box 0 of {WHERE} .*outside the 64x64"),
        (_target([2.0, 2.0, 20.0, 20.0], 3), rf"label 3 of box 0 of {WHERE} is outside \[0, 3\)"),
        (
            {"boxes": [[2.0, 2.0, 20.0, 20.0]], "labels": [1]},
            rf"{WHERE} are list and list; make them tensors",
        ),
        ({"labels": torch.tensor([1])}, rf"{WHERE} is \['labels'\]; it needs the keys 'boxes' and 'labels'"),
    ],
)
def test_bad_targets_name_the_sample_and_leave_the_weights(target: dict, match: str) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(_Bad(target), batch_size=2, collate_fn=TASK.collate_fn)
    with pytest.raises(ValueError, match=match):
        Trainer(model, epochs=1, progress=False).fit(loader)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # rolled back to the start


def test_targets_that_are_not_a_list_of_dicts_say_how_to_collate() -> None:
    images = torch.randn(2, 3, SIZE, SIZE)
    for targets in (torch.zeros(2, dtype=torch.long), [torch.zeros(1, 4), torch.zeros(1, 4)]):
        with pytest.raises(ValueError, match=r"list with one dict .*collate_fn=get_task\('detection'\)"):
            Trainer(_model(), epochs=1, progress=False).fit([(images, targets)])
    with pytest.raises(ValueError, match=r"2 images but 1 targets"):
        Trainer(_model(), epochs=1, progress=False).fit([(images, [GOOD])])


def test_cache_features_is_refused_for_detection_before_training() -> None:
    model = _model()
    model.freeze()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"cache_features=True does not support detection.*cache_features=False"
    ):
        Trainer(model, epochs=1, cache_features=True, progress=False).fit(_loader())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------- freezing
def _norms(model, trainable: bool):
    blocks = set(model.trainable_blocks)
    return [m for b, ms in model._block_modules.items() if (b in blocks) == trainable for m in ms
            if isinstance(m, torch.nn.BatchNorm2d)]  # fmt: skip


def _snapshot(modules) -> list[torch.Tensor]:
    return [v.detach().clone() for m in modules for v in m.state_dict().values()]


@pytest.mark.parametrize("head", ["fcos", "yolo"])
@pytest.mark.parametrize("bn", ["frozen", "frozen_all"])
def test_freezing_holds_through_detection_training(bn: str, head: str) -> None:
    model = _model(head)
    model.freeze("last_n", n=2, bn=bn)
    trainable = set(model.trainable_blocks)
    frozen = [m for b, ms in model._block_modules.items() if b not in trainable for m in ms]
    norms = [m for b in trainable for m in model._block_modules[b] if isinstance(m, torch.nn.BatchNorm2d)]
    before, norms_before = _snapshot(frozen), _snapshot(norms)
    Trainer(model, epochs=1, progress=False).fit(_loader())
    assert all(torch.equal(a, b) for a, b in zip(_snapshot(frozen), before))  # parameters and buffers
    model.train()
    assert all(not m.training for m in frozen if isinstance(m, torch.nn.BatchNorm2d))
    assert norms and all(m.training == (bn == "frozen") for m in norms)
    if bn == "frozen_all":  # statistics and affine parameters fixed in the trainable blocks too
        assert all(not p.requires_grad for m in norms for p in m.parameters())
        assert all(torch.equal(a, b) for a, b in zip(_snapshot(norms), norms_before))
    else:
        assert not all(torch.equal(a, b) for a, b in zip(_snapshot(norms), norms_before))


def test_pretrained_detectors_start_with_every_backbone_norm_frozen(monkeypatch) -> None:
    assert _model().freeze_state()["bn"] == "frozen"  # random init: BatchNorm must learn, as in torchvision
    from transferkit.models.backbones import create_backbone

    # "pretrained" without a download: the flag is what decides, the weights are random
    def random_weights(name, pretrained, **kw):
        return create_backbone(name, pretrained=False, **kw)

    monkeypatch.setattr("transferkit.models.build.create_backbone", random_weights)
    model = _model(pretrained=True)
    assert model.freeze_state()["bn"] == "frozen_all"
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    model.freeze("last_n", n=3)  # the task's default again
    assert model.freeze_state()["bn"] == "frozen_all"
    assert "eval (frozen)" in next(
        line for line in model.freeze_summary().splitlines() if line.startswith("layer4.1")
    )
    model.train()
    assert all(not m.training for m in norms)
    model.unfreeze()  # everything trains, as the freezing contract says: norm layers included
    assert model.freeze_state()["bn"] == "frozen" and all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in norms)
    model.freeze("none")  # every block trains, the task's norm default stays
    assert model.freeze_state()["bn"] == "frozen_all"
    model.freeze("none", bn="frozen")  # opting out
    assert all(p.requires_grad for m in norms for p in m.parameters())


# ------------------------------------------------------------------------------------------ predictions
def test_model_predict_gives_boxes_in_the_image_pixels() -> None:
    model = _model().eval()
    image = Image.new("RGB", (128, 96), (30, 30, 30))
    answer = model.predict(image, image_size=SIZE, score_threshold=0.0)  # every box the head keeps
    transform = TASK.image_transform(model, SIZE)
    with torch.no_grad():
        raw = model(transform(image)[None])[0]
    scale = torch.tensor([128 / SIZE, 96 / SIZE] * 2)
    order = raw["scores"].argsort(descending=True)
    assert torch.allclose(
        answer["boxes"], (raw["boxes"] * scale)[order].clamp(max=torch.tensor([128.0, 96] * 2))
    )
    assert answer["scores"].tolist() == sorted(answer["scores"].tolist(), reverse=True)
    assert (answer["boxes"][:, 2] <= 128).all() and (answer["boxes"][:, 3] <= 96).all()


def test_show_predictions_draws_predicted_and_true_boxes(tmp_path) -> None:
    fig = show_predictions(_model(), _loader(n=3), tmp_path / "boxes.png", classes=["a", "b", "c"])
    assert len(fig.axes) == 3 and (tmp_path / "boxes.png").stat().st_size > 1000
    assert "true boxes (dashed)" in fig._suptitle.get_text()


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("head", ["fcos", "yolo"])
def test_dense_heads_learn_shapes_map_rises(head: str) -> None:
    """The benchmark's short version (benchmarks/bench_detection.py generalises to new images): from
    random weights, mAP on a handful of 48 px images rises within 16 steps."""
    shapes = SyntheticShapesDetection(8, image_size=48, num_classes=2, max_objects=2)
    images = DataLoader(shapes, batch_size=8, collate_fn=TASK.collate_fn)
    model = build_model("resnet18", neck="fpn_lite", head=head, num_classes=2, pretrained=False,
                        neck_kwargs={"out_channels": 64})  # fmt: skip
    history = Trainer(model, epochs=16, lr=2e-3, progress=False, seed=0).fit({"train": images, "val": images})
    maps = [row["val_map_50"] for row in history]
    assert max(maps[-3:]) > max(maps[:3]) + 0.2, maps


# ------------------------------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("head", ["fcos", "retinanet", "fasterrcnn", "ssdlite", "yolo"])
def test_each_head_trains_and_evaluates_under_bf16_autocast(head: str) -> None:
    model = _model(head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, epochs=1, precision="bf16", progress=False)  # CPU autocast: the AMP code path
    history = trainer.fit({"train": _loader(4), "val": _loader(2, seed=1)})
    losses = [v for k, v in history[0].items() if k.startswith("train_loss")]
    assert len(losses) >= 3 and all(torch.isfinite(torch.tensor(losses)))
    assert 0.0 <= history[0]["val_map"] <= 1.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights fp32
