"""Building a timm backbone once, with timm's own pretrained loading, behind transferkit's errors.

``timm.create_model(name, features_only=True, pretrained=..., pretrained_cfg_overlay=...)`` builds the
feature extractor, loads the weights into the original model (running the model's checkpoint filter and
adapting the first convolution to ``in_chans``) and wraps it. What stays here: fetching hub weights with a
fast offline error, never handing timm a pickle, and naming what does not fit in a user's file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..weights import WeightsMismatchError, load_matching, read_state_dict
from .base import cannot_dilate, check_out_indices

__all__ = [
    "Weights",
    "as_tuple",
    "build_body",
    "check_loaded",
    "check_tag",
    "full_model",
    "resolve_indices",
    "safetensors_keys",
]

_LOAD_ERRORS = (RuntimeError, KeyError)  # what torch's load_state_dict and timm's checkpoint filters raise


@dataclass(frozen=True)
class Weights:
    """Where a timm backbone's weights come from.

    Attributes:
        overlay: timm's ``pretrained_cfg_overlay``: ``{"file": path}`` for a ``.safetensors`` file (it
            cannot hold code) or timm's own formats, ``{"state_dict": ...}`` for a pickle read here.
        source: What the weights are, for messages.
        path: The file.
        keys: For the user's own file (``pretrained=PATH``): its keys less the classifier's, which the
            body's must all be among (timm loads what fits and leaves the rest as initialised).
    """

    overlay: dict[str, Any]
    source: str
    path: Path
    keys: frozenset[str] | None = None


def full_model(arch: str, in_chans: int, kwargs: dict[str, Any]) -> Any:
    """The whole timm model on the meta device, for slow paths only (negative ``out_indices``, a file that
    does not fit): its level count and its checkpoint's key names."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(arch, pretrained=False, in_chans=in_chans, **kwargs)
    except (NotImplementedError, RuntimeError):  # builders that need real tensors
        return timm.create_model(arch, pretrained=False, in_chans=in_chans, **kwargs).to("meta")


def check_tag(arch: str, tag: str) -> None:
    """Raise ValueError, listing the valid ones, for a weights tag timm does not have for ``arch``."""
    import timm

    valid = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in valid:
        raise ValueError(
            f"unknown weights tag {tag!r} for timm/{arch}; valid tags: {', '.join(valid) or 'none'}"
        )


def resolve_indices(
    out_indices: Any, full_name: str, in_chans: int, kwargs: dict[str, Any]
) -> tuple[int, ...] | None:
    """``out_indices`` checked and made non-negative; the range is checked by timm's build (`build_body`)."""
    if out_indices is None:
        return None
    if (
        isinstance(out_indices, (list, tuple))
        and out_indices
        and all(isinstance(i, int) and i >= 0 for i in out_indices)
    ):
        return check_out_indices(out_indices, max(out_indices) + 1)
    levels = len(full_model(full_name, in_chans, kwargs).feature_info)  # -1 counts from the end: slow path
    return check_out_indices(out_indices, levels)


def as_tuple(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def safetensors_keys(path: Path) -> frozenset[str]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        read_state_dict(path)  # raises its FileNotFoundError
    try:
        with safe_open(str(path), framework="pt") as f:
            return frozenset(f.keys())
    except (SafetensorError, OSError):
        read_state_dict(path)  # names the damage
        raise


@contextmanager
def _built_roots() -> Iterator[list[nn.Module]]:
    """Collects the outermost modules built inside the block: the model a features wrapper took its layers
    from (timm keeps no reference to it, but its names and group matcher are the checkpoint's)."""
    from torch.nn.modules.module import register_module_module_registration_hook

    parents: dict[int, nn.Module] = {}
    children: list[nn.Module] = []  # held, so that no id is reused while the build runs

    def hook(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        parents.setdefault(id(module), module)
        if submodule is not None:
            children.append(submodule)

    roots: list[nn.Module] = []
    handle = register_module_module_registration_hook(hook)
    try:
        yield roots
    finally:
        handle.remove()
    held = {id(m) for m in children}
    roots.extend(m for key, m in parents.items() if key not in held)


class _ExpectedUnexpectedKeys(logging.Filter):
    """timm warns about the head's keys a feature extractor leaves out; transferkit checks the keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unexpected keys")


def _source_model(body: nn.Module, roots: list[nn.Module]) -> nn.Module | None:
    """The model whose names timm's group matcher and checkpoints use: the body itself (hrnet), the model a
    getter wraps (ViTs) or the model a features wrapper took its layers from; None for timm's own
    ``*Features`` classes, which keep the original model's names without its class."""
    first = next(body.parameters(), None)
    for candidate in (body, *body.children(), *roots):
        if hasattr(candidate, "group_matcher") and any(p is first for p in candidate.parameters()):
            return candidate
    return None


def _create(
    full_name: str,
    in_chans: int,
    indices: tuple[int, ...] | None,
    kwargs: dict[str, Any],
    weights: Weights | None,
) -> tuple[Any, nn.Module | None]:
    import timm

    extra: dict[str, Any] = {"out_indices": indices} if indices is not None else {}
    if weights is not None:
        extra["pretrained_cfg_overlay"] = weights.overlay
    builder = logging.getLogger(timm.models.load_pretrained.__module__)
    quiet = _ExpectedUnexpectedKeys()
    builder.addFilter(quiet)
    try:
        with _built_roots() as roots:
            body = timm.create_model(
                full_name,
                pretrained=weights is not None,
                features_only=True,
                in_chans=in_chans,
                **extra,
                **kwargs,
            )
    finally:
        builder.removeFilter(quiet)
    for module in body.modules():  # timm keeps copies of a handed state_dict in the configs it attaches
        for attr in ("pretrained_cfg", "default_cfg"):
            if isinstance(module.__dict__.get(attr), dict):
                module.__dict__[attr].pop("state_dict", None)
    return body, _source_model(body, roots)


def _stride(body: Any) -> int:
    return int(body.feature_info.info[-1]["reduction"])


def _create_at(
    full_name: str,
    in_chans: int,
    indices: tuple[int, ...] | None,
    kwargs: dict[str, Any],
    output_stride: int | None,
    weights: Weights | None,
) -> tuple[Any, nn.Module | None]:
    """`_create` at ``output_stride``: timm dilates the last stages of the models that take it."""
    if output_stride is None:
        return _create(full_name, in_chans, indices, kwargs, weights)
    model = f"timm/{full_name.partition('.')[0]}"
    try:
        body, source = _create(
            full_name, in_chans, indices, {**kwargs, "output_stride": output_stride}, weights
        )
    except (TypeError, AssertionError, ValueError, NotImplementedError) as err:  # no such argument or value
        body, source = _create(full_name, in_chans, indices, kwargs, weights)
        if _stride(body) != output_stride:
            raise cannot_dilate(model, output_stride, _stride(body)) from err
        return body, source  # the model's own stride
    if _stride(body) != output_stride:  # took the argument but does not dilate
        raise cannot_dilate(model, output_stride, _stride(body))
    return body, source


def _mismatch(
    full_name: str, in_chans: int, kwargs: dict[str, Any], weights: Weights
) -> WeightsMismatchError | None:
    """What in the file does not fit, named against the whole model (built on the meta device: a slow path,
    for errors only); None when every key and shape fits."""
    full = full_model(full_name, in_chans, {**kwargs, "num_classes": 0})  # the file's classifier is ignored
    cfg = full.pretrained_cfg
    try:
        load_matching(
            full,
            read_state_dict(weights.path),
            source=weights.source,
            ignore=tuple(f"{c}." for c in as_tuple(cfg.get("classifier"))),
            input_convs=tuple(f"{c}.weight" for c in as_tuple(cfg.get("first_conv"))),
        )
    except WeightsMismatchError as err:
        return err
    return None


def build_body(
    full_name: str,
    in_chans: int,
    indices: tuple[int, ...] | None,
    kwargs: dict[str, Any],
    output_stride: int | None,
    weights: Weights | None,
) -> tuple[Any, nn.Module | None]:
    """The feature extractor with its weights loaded by timm, and the model whose names its checkpoints
    and group matcher use (None when that is the body's own).

    Raises:
        ValueError: ``out_indices`` out of range, or ``output_stride`` the model cannot give.
        WeightsMismatchError: the user's file does not fit (wrong keys or shapes).
    """
    if weights is not None and weights.keys is not None and not weights.keys:  # timm would fetch its own
        raise _mismatch(full_name, in_chans, kwargs, weights) or WeightsMismatchError(
            f"{weights.source} is empty"
        )
    try:
        body, source = _create_at(full_name, in_chans, indices, kwargs, output_stride, weights)
        if indices is not None and tuple(body.feature_info.out_indices) != indices:
            raise ValueError(f"timm built levels {body.feature_info.out_indices}, not {indices}")
    except Exception as err:  # say what was wrong where it was ours
        if indices is not None:
            check_out_indices(indices, len(full_model(full_name, in_chans, kwargs).feature_info))
        if weights is not None and weights.keys is not None:
            if weights.path.suffix == ".safetensors" and not isinstance(err, _LOAD_ERRORS):
                read_state_dict(weights.path)  # a damaged file: its message names it
            mismatch = (
                _mismatch(full_name, in_chans, kwargs, weights) if isinstance(err, _LOAD_ERRORS) else None
            )
            if mismatch is not None:
                raise mismatch from None
        raise
    return body, source


def check_loaded(
    body: nn.Module,
    source: nn.Module | None,
    originals: dict[str, str],
    full_name: str,
    in_chans: int,
    kwargs: dict[str, Any],
    weights: Weights | None,
) -> None:
    """Raise WeightsMismatchError unless the user's file holds every tensor of the body and nothing the
    model does not have (timm loads what fits into a feature extractor and leaves the rest as it was).

    Args:
        body: The feature extractor, loaded.
        source: The model timm loaded the file into (see `build_body`), or None when that is the body.
        originals: The body's state_dict keys -> the original model's (the file's) keys.
    """
    if weights is None or weights.keys is None:
        return  # the hub's weights are timm's to fit
    missing = [k for k, original in originals.items() if original not in weights.keys]
    model = source if source is not None else body  # what timm loaded the file into, less what it pruned
    known, used = set(model.state_dict()), set(originals.values())
    held = {name for name, child in model.named_children() if next(child.parameters(), None) is not None}
    # a key for a part the model left out (conv_head, a pruned norm) is fine; one inside a part it has is not
    unexpected = [k for k in weights.keys if k not in used and k not in known and k.partition(".")[0] in held]
    if missing or unexpected:  # the whole model, on the meta device, has the last word
        mismatch = _mismatch(full_name, in_chans, kwargs, weights)
        if mismatch is not None:
            raise mismatch
    if missing:
        raise WeightsMismatchError(
            f"{weights.source} does not fit this model: {len(missing)} missing keys {missing[:4]}. The file "
            "must hold the state_dict of the same architecture (classifier keys are ignored)."
        )
