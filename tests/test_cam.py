"""Class-activation maps through grad-cam (`transferkit.interpret.activation_maps`, `show_top_losses`) and
`transferkit.viz.show_batch`: map shapes and range, maps that land where the evidence is (a hand-built CNN,
a ViT with registers trained to find a square), the block output the default layer takes, a model given
back untouched (modes, requires_grad, .grad, hooks), frozen models, the missing extra, and a batch drawn
for each task with its normalisation undone exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from transferkit import TransferModel, build_model
from transferkit.data import SyntheticShapes, SyntheticShapesDetection
from transferkit.interpret import activation_maps, interpret, show_top_losses
from transferkit.interpret.cam import _last_output, _layer_modules, _tapped
from transferkit.preprocessing import declare_data_config
from transferkit.tasks import get_task
from transferkit.viz import show_batch
from transferkit.viz.plots import display_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# the gradcam extra, part of the test extra; show_batch and the missing-extra error need no grad-cam
needs_gradcam = pytest.mark.skipif(
    importlib.util.find_spec("pytorch_grad_cam") is None, reason='needs pip install "transferkit[gradcam]"'
)

VIT = "timm/vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def resnet() -> TransferModel:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=3, pretrained=False)


def _images(n: int = 3, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(1))


def _panels(fig: object) -> list:
    return [ax for ax in fig.axes if ax.images]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------- the maps


@needs_gradcam
def test_maps_have_the_input_size_and_lie_in_0_1(resnet: TransferModel) -> None:
    for method, (height, width) in [("gradcam", (64, 64)), ("hirescam", (64, 96)), ("eigencam", (96, 64))]:
        maps = activation_maps(resnet, _images(2, height, width), method=method)
        assert maps.shape == (2, height, width) and maps.dtype == torch.float32, method
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1, method
        assert float(maps.max()) > 0.99, method  # each map is scaled to its own maximum


class Brightness(nn.Module):
    """Class 1 is "bright": one channel holds each 8x8 patch's mean brightness, pooled into the logit."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 1, 8, stride=8)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.patches.weight.fill_(1 / (3 * 8 * 8))
            self.patches.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.patches(x).relu().mean((2, 3)))


@needs_gradcam
def test_a_map_peaks_on_the_evidence_for_its_class_and_not_elsewhere() -> None:
    image = torch.zeros(1, 3, 32, 48)  # not square: rows and columns must not swap
    image[..., 16:24, 32:40] = 1.0
    model = Brightness()
    bright, dark = activation_maps(model, image.repeat(2, 1, 1, 1), targets=[1, 0], layer=model.patches)
    row, column = divmod(int(bright.argmax()), 48)
    assert 16 <= row < 24 and 32 <= column < 40
    assert float(bright[16:24, 32:40].mean()) > 0.5 > float(bright[:8, :16].max())
    assert float(dark.max()) == 0  # no evidence for "dark" anywhere: brightness only lowers its logit


class ChannelsLast(Brightness):
    """The same evidence through a layer that lays its maps out ``[N, H, W, C]``, as timm's Swin does."""

    output_fmt = "NHWC"

    def __init__(self) -> None:
        super().__init__()
        self.nhwc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.nhwc(self.patches(x).permute(0, 2, 3, 1))
        return self.fc(maps.relu().mean((1, 2)))


@needs_gradcam
def test_channels_last_maps_are_read_channels_first() -> None:
    image = torch.zeros(1, 3, 32, 48)
    image[..., 8:16, 0:8] = 1.0
    model = ChannelsLast()
    bright = activation_maps(model, image, targets=1, layer=model.nhwc)[0]
    assert divmod(int(bright.argmax()), 48)[0] in range(8, 16) and int(bright.argmax()) % 48 < 8


def _squares(n: int, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dim noise; odd images hold a bright square filling one cell of a ``grid`` x ``grid`` layout."""
    generator = torch.Generator().manual_seed(0)
    cell = size // grid
    images = torch.rand(n, 3, size, size, generator=generator) * 0.3
    labels = torch.arange(n) % 2
    cells = torch.randint(0, grid, (n, 2), generator=generator)
    for i in labels.nonzero().flatten().tolist():
        top, left = (cells[i] * cell).tolist()
        images[i, :, top + 2 : top + cell - 2, left + 2 : left + cell - 2] = 1.0
    return (images - 0.5) / 0.25, labels, cells


@needs_gradcam
def test_vit_maps_peak_on_the_square_that_decides_the_class() -> None:
    # 4 registers: the block's tokens are 1 class token + 4 registers + a 3x3 grid
    model = build_model(
        VIT, num_classes=2, pretrained=False, backbone_kwargs={"img_size": 48, "reg_tokens": 4}
    )
    images, labels, cells = _squares(32, 48, 3)
    model.freeze()
    model.eval()
    with torch.no_grad():
        features = model.neck(model.backbone(images))
    head = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(100):  # the head alone, on features computed once
        loss = nn.functional.cross_entropy(model.head(features, (48, 48)), labels)
        head.zero_grad()
        loss.backward()
        head.step()
    assert float(loss.detach()) < 0.1
    squares = labels.nonzero().flatten()
    maps = activation_maps(model, images[squares], targets=1)
    peaks = torch.stack([torch.tensor(divmod(int(m.argmax()), 48)) // 16 for m in maps])
    assert torch.equal(peaks, cells[squares])


def test_the_default_layer_is_the_output_of_the_last_block(resnet: TransferModel) -> None:
    x = _images(1)
    # torchvision's backbone is an fx graph of leaf calls: the block ends in the second call of its ReLU
    modules, what = _layer_modules(resnet, None)
    source, call = _last_output(resnet, modules, x, what)
    assert source is resnet.backbone.body.get_submodule("layer4.1.relu") and call == 2
    seen: list[torch.Tensor] = []
    with _tapped(resnet, source, call) as tap, torch.no_grad():
        tap.register_forward_hook(lambda _, __, out: seen.append(out))
        resnet.eval()
        coarsest = resnet.backbone(x)[-1]
    assert len(seen) == 1 and torch.equal(seen[0], coarsest)
    vit = build_model(VIT, num_classes=2, pretrained=False, backbone_kwargs={"img_size": 32})
    modules, what = _layer_modules(vit, None)
    block, call = _last_output(vit, modules, torch.randn(1, 3, 32, 32), what)
    assert block is vit.backbone.body.model.blocks[-1] and call == 1  # timm runs its block as a whole


def _state(model: nn.Module) -> tuple[list, list, list, list]:
    hooks = [
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    ]
    grads = [None if p.grad is None else (p.grad, p.grad.clone()) for p in model.parameters()]
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], grads, hooks


@needs_gradcam
def test_the_model_comes_back_as_it_was(resnet: TransferModel) -> None:
    resnet.freeze(policy="last_n", n=2)
    resnet.train()
    resnet.head.fc.weight.grad = torch.ones_like(resnet.head.fc.weight)  # a gradient being accumulated
    before, weights = _state(resnet), {k: v.clone() for k, v in resnet.state_dict().items()}
    assert any(before[0]) and not all(before[0]) and any(before[1]) and not all(before[1])
    reached: list[torch.Tensor] = []  # gradients go to activations only: no parameter gets one
    handle = resnet.head.fc.weight.register_hook(reached.append)
    activation_maps(resnet, _images(2), layer=-2)
    handle.remove()
    assert not reached
    after = _state(resnet)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3]
    for old, new in zip(before[2], after[2]):
        assert (old is None and new is None) or (new[0] is old[0] and torch.equal(new[1], old[1]))
    assert all(torch.equal(weights[k], v) for k, v in resnet.state_dict().items())  # BN statistics too
    resnet.head.fc.weight.grad = None
    resnet.unfreeze()


@needs_gradcam
def test_a_fully_frozen_model_gives_the_same_maps(resnet: TransferModel) -> None:
    expected = activation_maps(resnet, _images(2), targets=[0, 2])
    for p in resnet.parameters():
        p.requires_grad_(False)
    try:
        torch.testing.assert_close(activation_maps(resnet, _images(2), targets=[0, 2]), expected)
        assert not any(p.requires_grad for p in resnet.parameters())
    finally:
        resnet.unfreeze()
        for p in resnet.parameters():
            p.requires_grad_(True)


class DeadBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return self.fc(self.used(x).mean((2, 3)))


@needs_gradcam
def test_bad_arguments_are_refused_with_what_to_do(resnet: TransferModel) -> None:
    x = _images(2)
    cases = [
        ({"layer": 9}, "not a block index in \\[-9, 8\\]"),
        ({"layer": nn.Conv2d(3, 3, 1)}, "not a module of this model"),
        ({"method": "gradcamm"}, "did you mean 'gradcam'"),
        ({"targets": 3}, "out of range: classes are 0..2"),
        ({"targets": [0, 1, 2]}, "3 classes for 2 images"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            activation_maps(resnet, x, **kwargs)
    with pytest.raises(ValueError, match="images \\[N, C, H, W\\]"):
        activation_maps(resnet, x[0])
    dead = DeadBranch()
    with pytest.raises(ValueError, match="does not reach the class scores"):
        activation_maps(dead, x, layer=dead.unused)
    assert activation_maps(dead, x, layer=dead.used).shape == (2, 64, 64)  # any classifier, given a layer
    segmenter = build_model("resnet18", head="fcn", num_classes=2, pretrained=False)
    with pytest.raises(ValueError, match="explain classifiers"):
        activation_maps(segmenter, x)


def test_without_grad_cam_the_error_names_the_extra(
    resnet: TransferModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "transferkit\[gradcam\]"'):
        activation_maps(resnet, _images(1))


# --------------------------------------------------------------------------------------- top losses


@needs_gradcam
def test_show_top_losses_draws_the_worst_images_with_their_maps(
    resnet: TransferModel, tmp_path: Path
) -> None:
    data = TensorDataset(_images(6), torch.tensor([0, 1, 2, 0, 1, 2]))
    loader = DataLoader(data, batch_size=4)
    interp = interpret(resnet, loader, device="cpu", progress=False)
    fig = show_top_losses(interp, resnet, loader, k=4, path=tmp_path / "top.png")
    assert (tmp_path / "top.png").stat().st_size > 0
    panels = _panels(fig)
    assert len(panels) == 4 and all(len(ax.images) == 2 for ax in panels)  # image and map
    top = interp.top_losses(4)
    assert [ax.get_title().splitlines()[0] for ax in panels] == [
        f"{s.true} \u2192 {s.predicted}" for s in top
    ]
    shown = np.stack([ax.images[0].get_array() for ax in panels])
    expected = display_images(torch.stack([data[s.index][0] for s in top]), resnet)
    np.testing.assert_allclose(shown, np.stack(expected), atol=1e-6)  # re-read by index, in order
    assert all(len(ax.images) == 1 for ax in _panels(show_top_losses(interp, resnet, loader, k=2, cam=False)))
    with pytest.raises(ValueError, match="in order"):
        show_top_losses(interp, resnet, DataLoader(data, batch_size=4, shuffle=True))


# ----------------------------------------------------------------------------------------- show_batch


class Known(Dataset):
    """Pixels in [0, 1] known in advance, normalised with a declared, non-ImageNet mean and std."""

    mean, std = (0.2, 0.5, 0.7), (0.1, 0.3, 0.2)

    def __init__(self) -> None:
        self.pixels = torch.rand(4, 3, 16, 24, generator=torch.Generator().manual_seed(2))
        self.classes = ["cat", "dog"]
        declare_data_config(self, {"input_size": (3, 16, 24), "mean": self.mean, "std": self.std})

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        mean, std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
        return (self.pixels[i] - mean) / std, i % 2


def test_show_batch_undoes_the_normalisation_exactly(tmp_path: Path) -> None:
    dataset = Known()
    model = build_model("resnet18", num_classes=2, pretrained=False)  # ImageNet's mean and std
    # the loader's declaration describes its tensors, so it wins over the model's
    fig = show_batch(DataLoader(dataset, batch_size=4), model, n=3, path=tmp_path / "batch.png")
    assert (tmp_path / "batch.png").stat().st_size > 0
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["cat", "dog", "cat"]
    for ax, pixels in zip(panels, dataset.pixels):
        np.testing.assert_allclose(ax.images[0].get_array(), pixels.permute(1, 2, 0).numpy(), atol=1e-6)
    # no declaration on the loader: the model's data_config
    model.data_config = {"mean": Known.mean, "std": Known.std}
    inputs = torch.stack([dataset[i][0] for i in range(4)])
    plain = DataLoader(TensorDataset(inputs, torch.tensor([0, 1] * 2)))
    shown = _panels(show_batch(plain, model, n=1))[0].images[0].get_array()
    np.testing.assert_allclose(shown, dataset.pixels[0].permute(1, 2, 0).numpy(), atol=1e-6)


def test_show_batch_draws_masks_and_boxes(tmp_path: Path) -> None:
    shapes = SyntheticShapes(4, image_size=32, task="segmentation")
    images, masks = next(iter(DataLoader(shapes, batch_size=4)))
    masks[:, :4] = 255  # an ignored band at the top stays uncoloured (grey)
    fig = show_batch([(images, masks)], n=4, path=tmp_path / "masks.png")
    panels = _panels(fig)
    assert len(panels) == 4 and (tmp_path / "masks.png").exists()
    for ax, mask in zip(panels, masks):
        drawn = np.asarray(ax.images[0].get_array())
        grey = np.ptp(drawn, axis=-1) < 1e-6
        shape = (mask > 0) & (mask != 255)
        assert grey[:4].all() and shape.any() and not grey[shape.numpy()].any()  # shapes are tinted
    detection = SyntheticShapesDetection(5, image_size=32)
    loader = DataLoader(detection, batch_size=5, collate_fn=get_task("detection").collate_fn)
    fig = show_batch(loader, n=3, path=tmp_path / "boxes.png")
    boxes = [len(detection[i][1]["boxes"]) for i in range(3)]
    assert [len(ax.patches) for ax in _panels(fig)] == boxes
    labels = [t.get_text() for ax in _panels(fig)[:1] for t in ax.texts]
    assert labels == [detection.classes[k] for k in detection[0][1]["labels"].tolist()]


def test_show_batch_refuses_what_it_cannot_draw() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2, 5)), batch_size=2)
    with pytest.raises(ValueError, match="pass the model"):
        show_batch(loader)
    with pytest.raises(ValueError, match="n and columns must be >= 1"):
        show_batch(loader, n=0)
    with pytest.raises(ValueError, match="no batches"):
        show_batch([])
