"""Weights files in another library's key layout, mapped onto the layout ``pretrained=PATH`` reads.

``build_model(backbone, pretrained=PATH)`` reads a file holding the state_dict of the original
torchvision or timm model, under its key names. A file saved by another implementation of the same
network (``efficientnet_pytorch``'s ``_conv_stem.weight`` for timm's ``conv_stem.weight``) is refused
with its missing and unexpected keys. Two ways to map it, then write it once and load it like any file:

- by a key map: a callable (or dict) from the file's key to the original model's key, None to drop one;
- by order and shape: when both libraries register the same tensors in the same order (the common case
  for ports of one network), the n-th tensor of the file becomes the n-th of the original model, every
  pair checked for shape, and the counts checked to agree.

Examples:
    >>> import torchvision
    >>> theirs = {f"net.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    >>> mapped = map_by_order(theirs, reference_state_dict("torchvision/resnet18"))
    >>> list(mapped)[:2]
    ['conv1.weight', 'bn1.weight']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from .weights import WeightsMismatchError, read_state_dict

__all__ = ["KeyMap", "convert_weights", "map_by_order", "reference_state_dict", "rename_keys"]

KeyMap = Callable[[str], str | None] | Mapping[str, str]  # the file's key -> the model's key (None: drop)


def reference_state_dict(backbone: str) -> dict[str, Tensor]:
    """The keys and shapes (as meta tensors, no memory) of the state_dict ``pretrained=PATH`` reads for
    ``backbone``: the original torchvision or timm model's, classifier included.

    Raises:
        ValueError: An unknown name, or a registered backbone (what it reads is up to its factory).

    Examples:
        >>> ref = reference_state_dict("resnet18")
        >>> len(ref), ref["conv1.weight"].shape
        (122, torch.Size([64, 3, 7, 7]))
    """
    from .backbones import BACKBONES, resolve_name

    name = resolve_name(backbone)
    source, _, arch = name.partition("/")
    if name in BACKBONES or source not in ("torchvision", "timm"):
        raise ValueError(f"{backbone!r} is a registered backbone: the weights it reads are up to its factory")
    with torch.device("meta"):
        if source == "torchvision":
            import torchvision.models as tvm

            model = tvm.get_model(arch, weights=None)
        else:
            import timm

            model = timm.create_model(arch.partition(".")[0], pretrained=False)
    return dict(model.state_dict())


def rename_keys(state: Mapping[str, Tensor], key_map: KeyMap) -> dict[str, Tensor]:
    """``state`` under new keys: ``key_map(key)`` (a callable, or a dict where absent keys stay), None
    dropping a key; the order is kept.

    Raises:
        WeightsMismatchError: Two keys mapped to the same new key (both named).
        TypeError: ``key_map`` is neither callable nor a dict, or returns something other than a str.

    Examples:
        >>> rename_keys({"_fc.weight": torch.zeros(2), "_fc.bias": torch.zeros(1)},
        ...             lambda k: None if k.endswith("bias") else k.lstrip("_"))
        {'fc.weight': tensor([0., 0.])}
    """
    if isinstance(key_map, Mapping):
        table = key_map
        key_map = lambda key: table.get(key, key)  # noqa: E731
    elif not callable(key_map):
        raise TypeError(f"key_map must be a callable or a dict of keys, got {type(key_map).__name__}")
    renamed: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for key, value in state.items():
        new = key_map(key)
        if new is None:
            continue
        if not isinstance(new, str):
            raise TypeError(f"key_map({key!r}) returned {new!r}; it must return a key (str) or None")
        if new in renamed:
            raise WeightsMismatchError(f"key_map maps both {source[new]!r} and {key!r} to {new!r}")
        renamed[new], source[new] = value, key
    return renamed


def map_by_order(
    state: Mapping[str, Tensor], reference: Mapping[str, Tensor] | nn.Module | str
) -> dict[str, Tensor]:
    """The tensors of ``state`` under the keys of ``reference``, paired by position and checked by shape.

    Args:
        state: The file's state_dict, in its own key layout (the order it was saved in).
        reference: The layout to map onto: a state_dict, a module, or a backbone name
            (`reference_state_dict`).

    Returns:
        A new dict with ``reference``'s keys, in its order, holding ``state``'s tensors.

    Raises:
        WeightsMismatchError: The counts differ, or a pair's shapes do (the first such pair named with
            its position, keys and shapes): the two layouts do not hold the same tensors in the same
            order, so pairing by position would load wrong weights.

    Examples:
        >>> theirs, ours = {"a": torch.zeros(3), "b": torch.ones(2)}, {"x": torch.ones(3), "y": torch.ones(2)}
        >>> mapped = map_by_order(theirs, ours)
        >>> {key: value.tolist() for key, value in mapped.items()}
        {'x': [0.0, 0.0, 0.0], 'y': [1.0, 1.0]}
    """
    if isinstance(reference, str):
        reference = reference_state_dict(reference)
    elif isinstance(reference, nn.Module):
        reference = reference.state_dict()
    theirs, ours = list(state.items()), list(reference.items())
    pairs = zip(theirs, ours, strict=False)
    for position, ((their_key, value), (our_key, like)) in enumerate(pairs):
        if tuple(value.shape) != tuple(like.shape):
            raise WeightsMismatchError(
                f"cannot map by order: tensor {position} is {their_key!r} {list(value.shape)} in the file "
                f"but {our_key!r} {list(like.shape)} in the reference ({len(theirs)} vs {len(ours)} "
                "tensors); the layouts differ here, so map the keys by name (key_map=) instead"
            )
    if len(theirs) != len(ours):
        longer, name = (theirs, "file") if len(theirs) > len(ours) else (ours, "reference")
        extra = longer[min(len(theirs), len(ours))][0]
        raise WeightsMismatchError(
            f"cannot map by order: the file has {len(theirs)} tensors and the reference {len(ours)}; all "
            f"shapes agree up to the shorter, then the {name} goes on with {extra!r}. Drop the extra "
            "tensors first (rename_keys), or map the keys by name"
        )
    return {our_key: value for (_, value), (our_key, _) in zip(theirs, ours, strict=True)}


def convert_weights(
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    destination: str | os.PathLike[str],
    *,
    key_map: KeyMap | None = None,
    backbone: str | Mapping[str, Tensor] | nn.Module | None = None,
) -> Path:
    """Write the weights of ``source`` under the original model's keys, as ``.safetensors`` for
    ``build_model(..., pretrained=destination)``.

    Exactly one of ``key_map`` and ``backbone`` says how: ``key_map`` renames (`rename_keys`),
    ``backbone`` maps by order and shape onto its reference layout (`map_by_order`).

    Args:
        source: A weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``, read without running
            pickled code) or a state_dict.
        destination: The ``.safetensors`` file to write (atomically; its folder must exist).
        key_map: The file's key -> the original model's key, None to drop a key.
        backbone: The backbone name (``"timm/efficientnet_lite0"``) whose layout to map onto by order,
            or a reference state_dict or module.

    Returns:
        ``destination`` as a Path.

    Raises:
        ValueError: Neither or both of ``key_map`` and ``backbone``, or a destination not ending in
            ``.safetensors``; `WeightsMismatchError` (a ValueError) when the mapping does not fit.

    Examples:
        >>> path = convert_weights("efficientnet-lite0.pth", "lite0.safetensors",
        ...                        backbone="timm/efficientnet_lite0")  # doctest: +SKIP
        >>> model = build_model("timm/efficientnet_lite0", num_classes=10, pretrained=path)  # doctest: +SKIP
    """
    remap = _remapping(key_map, backbone)
    destination = Path(destination)
    if destination.suffix != ".safetensors":
        raise ValueError(f"destination {str(destination)!r} must end in .safetensors")
    state: Mapping[str, Tensor] = source if isinstance(source, Mapping) else read_state_dict(source)
    mapped = remap(state)
    _save(mapped, destination)
    return destination


def _remapping(
    key_map: KeyMap | None, backbone: str | Mapping[str, Tensor] | nn.Module | None
) -> Callable[[Mapping[str, Tensor]], dict[str, Tensor]]:
    """`rename_keys` by ``key_map`` or `map_by_order` onto ``backbone``, whichever of the two is given."""
    if key_map is not None and backbone is None:
        return lambda state: rename_keys(state, key_map)
    if backbone is not None and key_map is None:
        return lambda state: map_by_order(state, backbone)
    raise ValueError("pass exactly one of key_map= (rename by key) and backbone= (map by order and shape)")


def _save(state: Mapping[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
