"""The Backbone contract and the block-partition helpers shared by every backbone source."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..features import FeatureInfo

__all__ = [
    "OUTPUT_STRIDES",
    "Backbone",
    "canonical_kwargs",
    "cannot_dilate",
    "check_blocks",
    "check_out_indices",
    "check_output_stride",
    "split_error",
    "structural_blocks",
    "walk_units",
]

OUTPUT_STRIDES = (8, 16, 32)  # what ``output_stride=`` may ask for
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_CONV_LIKE = (nn.modules.conv._ConvNd, nn.Linear)


class Backbone(nn.Module):
    """A multi-scale feature extractor: ``forward(x) -> list[Tensor]``, fine to coarse.

    Subclasses set:

    - ``feature_info``: a `FeatureInfo` for the returned levels.
    - ``blocks``: ordered ``{block name: [parameter names]}``, input to output, the stem first;
      every parameter of the backbone appears in exactly one block.
    - ``data_config``: the preprocessing of the pretrained weights (``input_size``, ``mean``, ``std``,
      ``interpolation``, ``crop_pct``).
    - ``min_input_size``: the smallest input side the network accepts; ``fixed_input_size`` when only
      one size works (torchvision's ViTs); ``input_multiple`` when every side must be a multiple of it
      (timm's ViTs at any size: their patch size).
    - ``config``: the keyword arguments that rebuild it through its registry factory.

    Library backbones can also ``split(k)`` at a block boundary (see `TorchvisionBackbone.split`), which
    lets a trainer run a frozen prefix once and cache its outputs.

    Examples:
        >>> backbone = build_model("resnet18", num_classes=2, pretrained=False).backbone
        >>> [tuple(level.shape[1:]) for level in backbone(torch.randn(1, 3, 64, 64))]
        [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
        >>> backbone.feature_info.reductions, list(backbone.blocks)[:3]
        ((2, 4, 8, 16, 32), ['stem', 'layer1.0', 'layer1.1'])
    """

    feature_info: FeatureInfo
    blocks: dict[str, list[str]]
    data_config: dict[str, Any]
    min_input_size: int = 1
    fixed_input_size: int | None = None
    input_multiple: int = 1
    config: dict[str, Any]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for an input this backbone cannot take (channels or size)."""
        in_chans = self.data_config["input_size"][0]
        if x.ndim != 4 or x.shape[1] != in_chans:
            raise ValueError(
                f"expected an input of shape [N, {in_chans}, H, W], got {list(x.shape)}; "
                "pass in_chans to build_model for other channel counts"
            )
        h, w = x.shape[-2:]
        if self.fixed_input_size is not None and (h, w) != (self.fixed_input_size,) * 2:
            raise ValueError(
                f"this backbone only takes {self.fixed_input_size}x{self.fixed_input_size} inputs, "
                f"got {h}x{w}; resize the images (transferkit's data transforms do it from model.data_config)"
            )
        if h % self.input_multiple or w % self.input_multiple:
            raise ValueError(
                f"this backbone takes sides that are multiples of {self.input_multiple} (its patch size), "
                f"got {h}x{w}; resize the images to a multiple (transferkit's data transforms resize to "
                "model.data_config['input_size']), or build a timm ViT with backbone_kwargs="
                "{'dynamic_img_pad': True} to pad them"
            )
        if min(h, w) < self.min_input_size:
            raise ValueError(
                f"input {h}x{w} is too small for this backbone: it needs at least "
                f"{self.min_input_size}x{self.min_input_size}"
            )


def canonical_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Builder keyword arguments in their one canonical form: keys sorted, every list or tuple a tuple.

    config.json reads every tuple back as a list, so without this a config would neither hash (the
    level-plan cache is keyed on it) nor compare equal to the one it was saved from. Tuples are what
    the builders' own defaults use, and they survive JSON as lists that map back to the same form.

    Examples:
        >>> canonical_kwargs({"b": [1, [2, 3]], "a": {"c": (4,)}})
        {'a': {'c': (4,)}, 'b': (1, (2, 3))}
    """
    return {k: _canonical(kwargs[k]) for k in sorted(kwargs)}


def _canonical(value: Any) -> Any:
    if type(value) in (list, tuple):  # exact types: a namedtuple (torchvision's ConvStemConfig) stays itself
        return tuple(_canonical(v) for v in value)
    if type(value) is dict:
        return canonical_kwargs(value)
    return value


def split_error(name: str, why: str) -> NotImplementedError:
    """The error for a backbone that cannot be split at a block boundary."""
    return NotImplementedError(
        f"{name} cannot be split at a block boundary ({why}); cache its features only with "
        f"freeze(policy='all'), or train with cache_features=False"
    )


def check_output_stride(output_stride: Any) -> None:
    """Raise ValueError unless ``output_stride`` is None (the native stride) or one of `OUTPUT_STRIDES`."""
    if output_stride is not None and (isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES):
        raise ValueError(
            f"output_stride must be 8, 16 or 32 (None: the backbone's native stride), got {output_stride!r}"
        )


def cannot_dilate(model: str, output_stride: int, native: int) -> ValueError:
    """The error for a backbone that cannot reach ``output_stride`` by dilation."""
    return ValueError(
        f"{model} cannot give output_stride={output_stride}: its coarsest level has stride {native} and it "
        "cannot trade strides for dilated convolutions. Backbones that can: torchvision ResNets with "
        "Bottleneck blocks (resnet50/101/152, resnext*, wide_resnet*) and timm models that take "
        "output_stride (the timm ResNets, resnet18 included, timm/convnext_*, timm/efficientnet_*, ...). "
        "Or leave output_stride unset for the native stride."
    )


def check_out_indices(out_indices: Any, num_levels: int) -> tuple[int, ...]:
    """Validate ``out_indices`` against ``num_levels`` levels; negative indices count from the end."""
    if out_indices is None:
        return tuple(range(num_levels))
    if isinstance(out_indices, int) or not all(isinstance(i, int) for i in out_indices):
        raise ValueError(f"out_indices must be a sequence of ints, got {out_indices!r}")
    resolved = tuple(i % num_levels if -num_levels <= i < num_levels else i for i in out_indices)
    bad = [i for i in resolved if not 0 <= i < num_levels]
    if bad or not resolved:
        raise ValueError(
            f"out_indices {tuple(out_indices)} out of range: this backbone has {num_levels} levels, "
            f"valid indices are 0..{num_levels - 1} (or -{num_levels}..-1)"
        )
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"out_indices {tuple(out_indices)} has duplicates")
    if list(resolved) != sorted(resolved):
        raise ValueError(f"out_indices {tuple(out_indices)} must go from fine to coarse (ascending)")
    return resolved


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _param_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, c) for n, c in module.named_children() if _has_params(c)]


def _is_composite(module: nn.Module) -> bool:
    return bool(_param_children(module))


def _is_block_level(module: nn.Module) -> bool:
    """A residual/dense/transformer block, as opposed to a conv-norm pair."""
    children = [c for _, c in _param_children(module)]
    return len(children) >= 3 or any(_is_composite(c) for c in children)


def _is_stage(module: nn.Module) -> bool:
    """A container of two or more blocks of one type: a residual stage, a dense block, ViT layers."""
    children = [c for _, c in _param_children(module)]
    return (
        isinstance(module, _CONTAINERS)
        and len(children) >= 2
        and len({type(c) for c in children}) == 1
        and all(_is_block_level(c) for c in children)
    )


def _expands(module: nn.Module) -> bool:
    return (
        type(module) in _CONTAINERS
        or _is_stage(module)
        or (_is_composite(module) and any(_is_stage(c) for _, c in _param_children(module)))
    )


def walk_units(
    module: nn.Module, skip: frozenset[str] = frozenset(), prefix: str = ""
) -> Iterator[tuple[str, list[str], str]]:
    """Yield ``(path, parameter names, kind)`` units in registration order.

    Containers, stages and modules holding a stage are opened up; everything else is a unit.
    ``kind`` is ``"composite"`` (a block such as a residual block), ``"conv"`` or ``"primitive"``
    (plain layers), ``"loose"`` (parameters held directly by an opened module, e.g. a class token)
    or ``"expanded"`` (an opened module itself, with no parameters listed).
    """
    yield prefix.rstrip("."), [], "expanded"
    own = [f"{prefix}{n}" for n, _ in module.named_parameters(recurse=False)]
    if own:
        yield prefix.rstrip(".") or "<root>", own, "loose"
    for name, child in _param_children(module):
        path = f"{prefix}{name}"
        if path in skip:
            continue
        if _expands(child):
            yield from walk_units(child, skip, f"{path}.")
        elif _is_composite(child):
            yield path, [f"{path}.{n}" for n, _ in child.named_parameters()], "composite"
        else:
            kind = "conv" if isinstance(child, _CONV_LIKE) else "primitive"
            yield path, [f"{path}.{n}" for n, _ in child.named_parameters()], kind


def structural_blocks(model: nn.Module, skip: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Split ``model``'s parameters into ordered blocks from its module structure.

    The stem is everything before the first composite unit (or the first composite unit when
    nothing precedes it); then each composite unit (a residual, inverted-residual, dense, inception
    or transformer block) is a block, and each run of plain layers between or after them (a
    transition, a final conv or norm) is one block. A network of plain layers only (VGG, AlexNet)
    gets a block per conv layer and the norm layers that follow it.

    Args:
        model: The network, in the layout its forward runs (registration order = forward order).
        skip: Module paths to leave out (the classifier).

    Returns:
        Ordered ``{block name: [parameter names]}``.
    """
    units = [u for u in walk_units(model, skip) if u[2] != "expanded"]
    has_composite = any(kind == "composite" for _, _, kind in units)
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    seen_composite = False
    for path, params, kind in units:
        if has_composite and not seen_composite and kind != "composite":
            blocks.setdefault("stem", []).extend(params)
        elif kind == "composite":
            blocks.setdefault("stem" if not blocks else path, []).extend(params)
            seen_composite, current = True, None
        elif current is None or (kind == "conv" and not has_composite):
            current = blocks.setdefault("stem" if not blocks else path, [])
            current.extend(params)
        else:
            current.extend(params)
    return blocks


def check_blocks(blocks: dict[str, list[str]], module: nn.Module) -> None:
    """Raise unless every parameter of ``module`` is in exactly one block."""
    names = [n for n, _ in module.named_parameters()]
    seen: dict[str, str] = {}
    for block, params in blocks.items():
        for p in params:
            if p in seen:
                raise ValueError(f"parameter {p!r} is in blocks {seen[p]!r} and {block!r}")
            seen[p] = block
    missing = [n for n in names if n not in seen]
    unknown = [p for p in seen if p not in set(names)]
    if missing or unknown:
        raise ValueError(
            f"blocks do not partition the backbone: missing {missing[:5]}, unknown {unknown[:5]}"
        )
