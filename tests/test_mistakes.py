"""The common data mistakes of a first hour: each names what was given, what is expected and the fix.

Where the intent is unambiguous (masks ``[N, 1, H, W]``, uint8 masks) the Trainer takes the data as it is.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from transferkit import Trainer, build_model
from transferkit.cli import main
from transferkit.data import SyntheticShapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


def _classifier():
    model = build_model("resnet18", num_classes=3, pretrained=False)
    model.freeze()
    return model


def _segmenter():
    return build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=4, pretrained=False)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE)


def _masks(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 4, (n, SIZE, SIZE))


def _fit(model, batches, **kwargs):
    return Trainer(model, epochs=1, progress=False, **kwargs).fit(batches)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


class DictSamples(Dataset):
    """A dataset in the Hugging Face style: each sample a dict."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"image": torch.randn(3, SIZE, SIZE), "label": index % 3}


def test_dict_batches_name_their_keys_and_the_fix() -> None:
    model = _classifier()
    before = _state(model)
    with pytest.raises(
        TypeError, match=r"batch at epoch 1, batch 1 is a dict with keys \['image', 'label'\]"
    ):
        _fit(model, DataLoader(DictSamples(), batch_size=2))
    with pytest.raises(TypeError, match="collate_fn that returns \\(images, targets\\)"):
        _fit(model, DataLoader(DictSamples(), batch_size=2))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_batches_that_are_not_pairs_say_what_they_are() -> None:
    with pytest.raises(TypeError, match=r"is a 3-item tuple; the Trainer takes \(inputs, targets\) pairs"):
        _fit(_classifier(), [(_images(), torch.zeros(4, dtype=torch.long), "extra")])


def test_float_masks_name_the_dtype_and_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"torch.float32 of shape \[4, 32, 32\].*convert with masks.long\(\)"
    ):
        _fit(_segmenter(), [(_images(), _masks().float())])
    with pytest.raises(ValueError, match=r"masks.squeeze\(1\).long\(\)"):
        _fit(_segmenter(), [(_images(), _masks().float()[:, None])])


def test_float_class_targets_for_the_default_loss_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"class indices \[N\] as integers: convert with targets.long\(\)"):
        _fit(_classifier(), [(_images(), torch.tensor([0.0, 1.0, 2.0, 1.0]))])
    soft = torch.softmax(torch.randn(4, 3), 1)  # class probabilities [N, K] are fine for cross-entropy
    assert len(_fit(_classifier(), [(_images(), soft)])) == 1


@pytest.mark.parametrize("form", ["[N, 1, H, W]", "uint8"])
def test_unambiguous_masks_are_taken_as_they_are(form: str) -> None:
    images, masks = _images(), _masks()
    masks[0, :4] = 255  # ignored pixels survive either form
    given = masks[:, None] if form == "[N, 1, H, W]" else masks.to(torch.uint8)
    torch.manual_seed(0)
    model = _segmenter()
    expected = Trainer(model, progress=False).evaluate([(images, masks)])
    assert Trainer(model, progress=False).evaluate([(images, given)]) == expected
    assert len(_fit(model, [(images, given)])) == 1


def test_masks_of_another_shape_are_named() -> None:
    with pytest.raises(ValueError, match=r"masks at epoch 1, batch 1 have shape \[4, 3, 32, 32\]"):
        _fit(_segmenter(), [(_images(), torch.zeros(4, 3, SIZE, SIZE, dtype=torch.long))])


def test_uint8_images_say_convert_to_float_and_normalise() -> None:
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"torch.uint8 images; .*images.float\(\) / 255 and normalise"):
        _fit(_classifier(), [(images, torch.tensor([0, 1, 2, 0]))])


def test_a_dataset_instead_of_a_loader_is_refused_before_training() -> None:
    dataset = SyntheticShapes(8, image_size=SIZE)
    model = _classifier()
    with pytest.raises(
        TypeError, match=r"train loader is a SyntheticShapes, a Dataset.*wrap it in a DataLoader"
    ):
        _fit(model, dataset)
    with pytest.raises(TypeError, match="evaluation loader is a TensorDataset"):
        Trainer(model, progress=False).evaluate(TensorDataset(_images(), torch.zeros(4)))
    with pytest.raises(TypeError, match="predict loader is a SyntheticShapes"):
        Trainer(model, progress=False).predict(dataset)
    with pytest.raises(ValueError, match=r"one image \[3, 32, 32\], not a batch .*DataLoader\(dataset"):
        _fit(model, [dataset[0]])  # a list of samples, not of batches


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"lr": "1e-3"},
            TypeError,
            r"lr must be a number such as 1e-3 or None, got str '1e-3' \(convert it: float",
        ),
        ({"epochs": 2.5}, TypeError, "epochs must be an int such as 10, got float 2.5"),
        ({"weight_decay": None}, TypeError, "weight_decay must be a number"),
        ({"lr": 0}, ValueError, "lr must be > 0, got 0"),
        ({"clip_grad_norm": -1.0}, ValueError, "clip_grad_norm must be > 0"),
        ({"progress": "no"}, TypeError, "progress must be True or False, got str 'no'"),
    ],
)
def test_arguments_of_the_wrong_type_name_the_argument(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        Trainer(_classifier(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_names_the_devices_there_are() -> None:
    with pytest.raises(ValueError, match=r"device='cuda', but this machine has 0 cuda .*\(it has cpu\)"):
        Trainer(_classifier(), device="cuda")
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["eval", "--model", "runs/none", "--data", "none", "--device", "cuda"])
    assert code == 2 and "argument --device: device 'cuda' is not available" in err.getvalue()
    assert "this machine has cpu" in err.getvalue()


def test_an_unknown_device_name_lists_the_valid_forms() -> None:
    with pytest.raises(ValueError, match="device must be 'auto' or a device such as 'cpu', 'cuda'"):
        Trainer(_classifier(), device="gpu")
