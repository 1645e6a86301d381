"""``model.predict``: what a trained model says about a few images, in one call.

Images may be files, PIL images or tensors; each is preprocessed with the evaluation transform of the
model's task (the backbone's ``data_config``: resize, crop, normalise), run through the model in eval
mode without gradients on the model's device, and turned into an answer by the task: for
classification the top classes by name with their probabilities, for segmentation a mask of class
indices at the image's own size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from .data.folders import _load_rgb, _resize_problem
from .data.loaders import _decode_side
from .data.pixels import array_to_pil
from .tasks import Task, get_task

if TYPE_CHECKING:
    from .models.model import TransferModel

__all__ = ["ImageInput", "check_finite_outputs", "evaluation_side", "predict_images", "read_image"]

ImageInput = str | os.PathLike | Image.Image | Tensor | np.ndarray  # one image, as `predict_images` takes it


def read_image(path: str | os.PathLike[str], *, resize_side: int | None = None) -> Image.Image:
    """The image file at ``path`` as RGB; an unreadable or oversized file raises `OSError` naming it.

    Args:
        path: An image file.
        resize_side: The shorter side the image will be scaled to (`evaluation_side`): a file that
            scaling would take over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), such
            as a 100000x1 strip, is refused before it is decoded. None checks only the file's own size.

    Examples:
        >>> read_image("bee.jpg").mode  # doctest: +SKIP
        'RGB'
    """
    # exactly as the folder loaders read it: upright, 8-bit, size-checked before decoding
    return _load_rgb(path, resize_side=resize_side)


def evaluation_side(model: TransferModel, image_size: int | None = None) -> int:
    """The side (at most) that the evaluation transform of ``model``, at ``image_size``, scales an image's
    shorter side to: what `read_image` checks a file against before decoding it.

    Examples:
        >>> evaluation_side(build_model("resnet18", num_classes=2, pretrained=False))  # 224 / 0.875
        256
    """
    return _decode_side(model.data_config, image_size, False)


def check_finite_outputs(outputs: Sequence[Any], names: Sequence[str]) -> None:
    """Raise `ValueError` naming the images (``names``, one per output) whose model outputs are not finite.

    An output is a tensor, or a mapping of tensors (a detector's boxes and scores).

    Examples:
        >>> check_finite_outputs([torch.zeros(2), torch.tensor([float("nan"), 0.0])], ["a.jpg", "b.jpg"])
        Traceback (most recent call last):
        ValueError: the model's outputs are not finite (NaN or infinite) for 1 image(s): b.jpg; ...
    """
    bad = [name for name, output in zip(names, outputs, strict=True) if not _is_finite(output)]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"the model's outputs are not finite (NaN or infinite) for {len(bad)} image(s): {shown}; its "
            "weights are likely damaged or its training diverged. Load an earlier checkpoint or a saved "
            "model whose outputs are finite, or train again (a lower learning rate, or clip_grad_norm)."
        )


def _is_finite(output: Any) -> bool:
    if isinstance(output, Tensor):
        return bool(output.isfinite().all()) if output.is_floating_point() else True
    if isinstance(output, Mapping):
        return all(_is_finite(value) for value in output.values())
    return True


def _name(image: Any, index: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"


def _as_input(image: Any, transform: Any, resize_side: int, index: int) -> tuple[Tensor, tuple[int, int]]:
    """One image as the model's input ``[C, H, W]`` and the size its answer refers to ``(H, W)``."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(Path(image), resize_side=resize_side)
    if isinstance(image, np.ndarray):
        image = array_to_pil(image, f"image {index}")  # HWC uint8 or float in [0, 1], like a file
    if isinstance(image, Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
        image = TF.to_pil_image(image)  # a raw image: it gets the preprocessing like a file would
    if isinstance(image, Image.Image):
        problem = _resize_problem(image.width, image.height, resize_side)  # what the transform makes
        if problem:
            raise ValueError(f"image {index}: {problem}")
        return transform(image.convert("RGB")), (image.height, image.width)
    if isinstance(image, Tensor) and image.ndim == 3 and image.is_floating_point():
        return image, (int(image.shape[-2]), int(image.shape[-1]))  # already preprocessed
    if isinstance(image, Tensor):
        what = f"a {image.dtype} tensor {list(image.shape)}"
    else:
        what = f"of type {type(image).__name__}"
    raise TypeError(
        f"image {index} is {what}; predict takes a file path, a PIL image, a numpy image [H, W, C] / "
        "[N, H, W, C] (uint8, or float in [0, 1]), a uint8 image tensor [3, H, W], or a preprocessed "
        "float tensor [C, H, W] / [N, C, H, W] (or a list of these)"
    )


def predict_images(
    model: TransferModel,
    images: ImageInput | Sequence[ImageInput],
    *,
    top_k: int = 5,
    image_size: int | None = None,
    batch_size: int = 32,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> Any:
    """Predict images with ``model``; what ``model.predict`` calls.

    Images are read, preprocessed and run ``batch_size`` at a time, and only the answers are kept, so
    memory stays that of one batch however many files are given.

    Args:
        model: A trained model; ``model.classes`` names its outputs.
        images: A path, a PIL image, a numpy image ``[H, W, C]`` or ``[H, W]`` (uint8, or float in
            [0, 1]), a uint8 image tensor ``[3, H, W]`` (these four are preprocessed with the task's
            evaluation transform), a numpy batch ``[N, H, W, C]``, a float tensor ``[C, H, W]`` already
            preprocessed, a float batch ``[N, C, H, W]``, or a list of any of these.
        top_k: Classes per image (classification), at most ``num_classes``.
        image_size: The square side the model was trained at, when not its ``data_config``'s.
        batch_size: Images per forward pass.
        score_threshold: Detection: the lowest score kept (default 0.3, from the detections the head keeps,
            which score its ``score_thresh``, 0.05 by default, or more).
        max_detections: Detection: the most boxes kept per image, best first (default 100, what the
            heads keep).

    Returns:
        For one image, its answer; for a list or a batch, a list of answers in order. Classification:
        ``[(class name, probability), ...]``, the ``top_k`` most likely first. Segmentation: the mask
        ``[H, W]`` of class indices (int64) at the image's own size (for tensors, the tensor's size).
        Detection: ``{"boxes" [D, 4], "scores" [D], "labels" [D]}``, boxes ``xyxy`` in the image's own
        pixels, best first, scoring ``score_threshold`` or more (``top_k`` does not apply).

    Raises:
        OSError: A file cannot be read, or is too large to read (see `read_image`); the message names it.
        ValueError: An in-memory image too large for the evaluation transform, model outputs that are
            not finite (`check_finite_outputs`: the message names the images), or ``score_threshold`` /
            ``max_detections`` for a model that does not detect, or out of range.
        TypeError: An input of another kind.

    Examples:
        >>> model = build_model("resnet18", num_classes=2, classes=["ants", "bees"], pretrained=False)
        >>> model.predict(Image.new("RGB", (64, 48)), top_k=2)  # doctest: +SKIP
        [('bees', 0.5274), ('ants', 0.4726)]
        >>> [len(answer) for answer in model.predict(torch.randn(3, 3, 64, 64), top_k=1)]
        [1, 1, 1]
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    single, items = True, [images]
    if isinstance(images, (list, tuple)) or (isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4):
        single, items = False, list(images)  # a list, a tuple or a batch: one item per image
    if not items:
        raise ValueError("predict got no images; pass a path, a PIL image, a tensor or a list of them")
    task = get_task(model.task)
    options = task.prediction_options(score_threshold=score_threshold, max_detections=max_detections)
    transform = task.image_transform(model, image_size)
    side = evaluation_side(model, image_size)
    classes = model.classes
    answers: list[Any] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        inputs, sizes = zip(
            *(_as_input(image, transform, side, start + i) for i, image in enumerate(chunk)), strict=True
        )
        outputs = _forward(model, task, list(inputs), batch_size)
        check_finite_outputs(outputs, [_name(image, start + i) for i, image in enumerate(chunk)])
        answers += [
            task.prediction(out, classes, top_k, size, tuple(x.shape[-2:]), **options)
            for out, size, x in zip(outputs, sizes, inputs, strict=True)
        ]
    return answers[0] if single else answers


@torch.no_grad()
def _forward(model: TransferModel, task: Task, inputs: list[Tensor], batch_size: int) -> list[Any]:
    """The model's output for each input, in eval mode on its device; inputs of one shape share batches."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    outputs: list[Any] = [None] * len(inputs)
    was_training = model.training
    model.eval()
    try:
        for chunk in _same_shape_batches(inputs, batch_size):
            batch = torch.stack([inputs[i] for i in chunk]).to(device)
            for i, out in zip(chunk, task.float_outputs(model(batch), torch.device("cpu")), strict=True):
                outputs[i] = out
    finally:
        model.train(was_training)
    return outputs


def _same_shape_batches(inputs: Sequence[Tensor], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``inputs`` in batches of at most ``batch_size`` that share one shape."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]
