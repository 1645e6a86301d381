"""Where a torchvision classification model's feature levels are, found on the meta device.

A forward pass on the meta device (no memory, no compute) records every module's output shape; a level
ends where a module of the network's opened-up structure last produces a stride. ``output_stride``
turns into ``replace_stride_with_dilation`` for the models that have it (the ResNet family), and a
dilated network keeps the levels of its strided self.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from .base import cannot_dilate, canonical_kwargs, check_output_stride, walk_units

__all__ = ["CLASSIFIER", "dilated_kwargs", "layout", "level_plan", "weights_enum"]

# Top-level attributes that belong to the classifier side of torchvision models, never to features:
# what the level plan and the block split leave out. Loading weights decides from the built feature
# extractor instead (see torchvision._load_body).
CLASSIFIER = frozenset(
    {
        "fc",
        "classifier",
        "head",
        "heads",
        "avgpool",
        "dropout",
        "flatten",
        "permute",
        "AuxLogits",
        "aux1",
        "aux2",
    }
)
_DILATION = "replace_stride_with_dilation"  # torchvision's ResNet builders: one flag per stage 2-4


def layout(name: str) -> str:
    """How the model's feature maps are laid out: ``"nchw"``, ``"nhwc"`` (Swin) or ``"tokens"`` (ViT)."""
    if name.startswith("vit_"):
        return "tokens"
    if name.startswith("swin"):
        return "nhwc"
    return "nchw"


def weights_enum(name: str) -> Any:
    """The model's weights enum (its ``DEFAULT`` entry also gives the preprocessing)."""
    return tvm.get_model_weights(name)


def _trace(
    name: str, kwargs: dict[str, Any]
) -> tuple[nn.Module, int, dict[str, int], list[tuple[str, tuple[int, ...]]]]:
    """The model on the meta device, the input side used, and each module's calls and output shapes."""
    size = weights_enum(name).DEFAULT.transforms().crop_size[0]
    try:
        with torch.device("meta"):
            model = tvm.get_model(name, weights=None, **kwargs).eval()
    except NotImplementedError:  # builders that compute widths with tensor ops (regnet) need real tensors
        model = tvm.get_model(name, weights=None, **kwargs).eval().to("meta")
    calls: dict[str, int] = {}
    outputs: list[tuple[str, tuple[int, ...]]] = []

    def record(path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[path] = calls.get(path, 0) + 1
            if isinstance(output, torch.Tensor):
                outputs.append((path, tuple(output.shape)))

        return hook

    handles = [
        m.register_forward_hook(record(p))
        for p, m in model.named_modules()
        if p and p.split(".")[0] not in CLASSIFIER
    ]
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return model, size, calls, outputs


def _reduction(size: int, shape: tuple[int, ...], nhwc: bool) -> int | None:
    """The power-of-two stride of a square map, or None for anything else (vectors, odd shapes)."""
    h, w = (shape[1], shape[2]) if nhwc else shape[2:]
    log2 = math.log2(size / h) if h == w and h >= 2 else -1.0
    if round(log2) >= 0 and abs(log2 - round(log2)) <= 0.35:
        return 2 ** round(log2)
    return None


@cache
def level_plan(name: str, kwargs_key: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, int, int], ...]:
    """``(module path, channels, reduction)`` of every level, found by a forward on the meta device.

    ``kwargs_key`` holds the builder's arguments as `canonical_kwargs` items, so that it hashes.
    """
    kwargs = dict(kwargs_key)
    if any(kwargs.get(_DILATION) or ()):
        # Dilation swaps a stage's stride for dilated convolutions: every stage still ends a level (as
        # with timm's output_stride), so the levels are the strided network's, now sharing strides.
        strided = level_plan(name, tuple((k, v) for k, v in kwargs_key if k != _DILATION))
        _, size, _, outputs = _trace(name, kwargs)
        shapes = dict(outputs)
        levels = []
        for path, c, _ in strided:
            r = _reduction(size, shapes[path], layout(name) == "nhwc")
            if r is None:
                raise NotImplementedError(
                    f"the dilated levels of torchvision/{name} have no power-of-two stride"
                )
            levels.append((path, c, r))
        return tuple(levels)

    model, size, calls, outputs = _trace(name, kwargs)
    if layout(name) == "tokens":
        layers = [p for p, _ in outputs if p.startswith("encoder.layers.") and p.count(".") == 2]
        vit: tvm.VisionTransformer = model  # what every vit_* builder gives
        depth, patch = len(layers), vit.patch_size
        picks = [layers[depth * k // 4 - 1] for k in (1, 2, 3)] + ["encoder.ln"]
        return tuple((p, vit.hidden_dim, patch) for p in picks)

    nhwc = layout(name) == "nhwc"
    expanded = {p for p, _, kind in walk_units(model, CLASSIFIER) if kind == "expanded"}
    reduction = {
        path: _reduction(size, shape, nhwc) if calls[path] == 1 and len(shape) == 4 else None
        for path, shape in outputs
    }
    # A level ends where a module directly inside the network's opened-up structure (stem layers,
    # stages, blocks) last produces that stride; modules inside a block never end a level.
    last: dict[int, tuple[str, int]] = {}
    for path, shape in outputs:
        r = reduction[path]
        if r is not None and (path in expanded or path.rpartition(".")[0] in expanded):
            last[r] = (path, shape[3] if nhwc else shape[1])
    return tuple((path, c, r) for r, (path, c) in sorted(last.items()))


def dilated_kwargs(name: str, kwargs: dict[str, Any], output_stride: int | None) -> dict[str, Any]:
    """The builder's arguments that give ``output_stride``: ``kwargs``, plus dilation when it is needed.

    Raises:
        ValueError: ``output_stride`` is not 8, 16 or 32, ``kwargs`` already set the dilation, or the
            model cannot dilate (torchvision has dilation for its Bottleneck ResNets only).
    """
    check_output_stride(output_stride)
    if output_stride is None:
        return kwargs
    if _DILATION in kwargs:
        raise ValueError(
            f"pass output_stride or backbone_kwargs {_DILATION}, not both (output_stride sets it)"
        )
    native = level_plan(name, tuple(kwargs.items()))[-1][2]
    if output_stride == native:
        return kwargs
    steps = round(math.log2(native / output_stride))
    if not 0 < steps <= 3:
        raise cannot_dilate(f"torchvision/{name}", output_stride, native)
    dilated = canonical_kwargs({**kwargs, _DILATION: (False,) * (3 - steps) + (True,) * steps})
    try:
        plan = level_plan(name, tuple(dilated.items()))
    except (TypeError, NotImplementedError) as err:  # no such argument; BasicBlock cannot dilate
        raise cannot_dilate(f"torchvision/{name}", output_stride, native) from err
    if plan[-1][2] != output_stride:
        raise cannot_dilate(f"torchvision/{name}", output_stride, native)
    return dilated
