"""Every timm model that supports ``features_only`` as a backbone.

timm is imported on first use, so that ``import transferkit`` (and torchvision backbones) do not load it.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..features import FeatureInfo
from ..weights import fetch_hf, fetch_url, is_weights_path, read_state_dict
from .base import (
    Backbone,
    canonical_kwargs,
    check_blocks,
    check_output_stride,
    split_error,
    structural_blocks,
)
from .timm_build import (
    Weights,
    as_tuple,
    build_body,
    check_loaded,
    check_tag,
    resolve_indices,
    safetensors_keys,
)
from .timm_vit_split import can_split_vit, vit_split

__all__ = ["TimmBackbone", "timm_names"]


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    """Every timm architecture that supports ``features_only`` (in timm 1.0 that is all of them; the
    registry smoke test builds one model of each timm module to keep this honest)."""
    import timm

    return tuple(timm.list_models())


def _resolve_weights(full_name: str, pretrained: Any, user_file: bool) -> Weights:
    """The weights ``pretrained`` asks for: the user's file, or the hub's, fetched into its cache (with
    `PretrainedUnavailableError` at once when offline).

    A pickle is read here (tensors only, never code) and handed to timm as a state_dict; timm reads only
    ``.safetensors`` files, which cannot hold code, and its own formats (``custom_load``: ``.npz``).
    """
    import timm

    model = f"timm/{full_name}"
    cfg = timm.models.get_pretrained_cfg(full_name)
    if user_file:
        path = Path(pretrained)
        drop = tuple(f"{c}." for c in as_tuple(cfg.classifier if cfg else None))
        if path.suffix == ".safetensors":
            keys = frozenset(k for k in safetensors_keys(path) if not k.startswith(drop))
            return Weights({"file": str(path)}, f"weights for {model} ({path})", path, keys)
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(drop)}
        return Weights({"state_dict": state}, f"weights for {model} ({path})", path, frozenset(state))
    if cfg is not None and cfg.hf_hub_id:
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
        path = fetch_hf(cfg.hf_hub_id, model=model, filenames=names)
        # the hub holds timm's own state_dicts, also for models whose original release (the url) is a
        # JAX .npz only their load_pretrained reads (custom_load: the augreg ViTs); timm does the same
        custom_load = False
    elif cfg is not None and cfg.url:
        path = fetch_url(cfg.url if isinstance(cfg.url, str) else cfg.url[0], model=model)
        custom_load = bool(cfg.custom_load)
    else:
        raise ValueError(
            f"timm has no pretrained weights for {model}; use pretrained=False or a weights file"
        )
    source = f"weights for {model} ({path})"
    if path.suffix == ".safetensors" or custom_load:
        return Weights({"file": str(path), "custom_load": custom_load}, source, path)
    return Weights({"state_dict": read_state_dict(path)}, source, path)


def _any_size_default(full_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``dynamic_img_size=True`` for a model whose pretrained config fixes its input size (ViTs, DeiT,
    EVA, Swin), unless the caller chose: timm then resamples the position embeddings (or attention
    windows) to each input's size, so the pretrained weights work at 64 or 96 px as at 224."""
    import timm

    if {"dynamic_img_size", "strict_img_size"} & set(kwargs):
        return {}
    cfg = timm.models.get_pretrained_cfg(full_name)
    return {"dynamic_img_size": True} if cfg is not None and cfg.fixed_input_size else {}


def _build_any_size(
    full_name: str,
    in_chans: int,
    indices: tuple[int, ...] | None,
    kwargs: dict[str, Any],
    output_stride: int | None,
    weights: Weights | None,
) -> tuple[Any, nn.Module | None, dict[str, Any]]:
    """`build_body` with `_any_size_default`, and the kwargs that rebuild the same: with
    ``dynamic_img_size`` where the model's constructor took it and uses it, without where not."""
    extra = _any_size_default(full_name, kwargs)
    try:
        body, source = build_body(full_name, in_chans, indices, {**kwargs, **extra}, output_stride, weights)
    except TypeError as err:  # a fixed-size model that has no such argument (CaiT, XCiT, PiT, ...)
        if not extra or "dynamic_img_size" not in str(err):
            raise
        return (*build_body(full_name, in_chans, indices, kwargs, output_stride, weights), kwargs)
    model = source if source is not None else body
    return body, source, ({**kwargs, **extra} if getattr(model, "dynamic_img_size", False) else kwargs)


def _input_rules(model: nn.Module, fixed: bool) -> tuple[bool, int]:
    """Whether ``model`` takes only its own input size (its pretrained config says so and it was not built
    with ``dynamic_img_size``), and the multiple every input side must be (a ViT's patch size, unless it
    pads: ``dynamic_img_pad``)."""
    if getattr(model, "dynamic_img_size", False):
        fixed = False
    embed = getattr(model, "patch_embed", None)
    if fixed or getattr(embed, "strict_img_size", True) or getattr(embed, "dynamic_img_pad", True):
        return fixed, 1
    patch = getattr(embed, "patch_size", 1)
    return fixed, math.lcm(*patch) if isinstance(patch, (tuple, list)) else int(patch)


def _matcher(body: nn.Module, source: nn.Module | None) -> Any:
    """timm's fine-grained parameter grouping for the body, or None when the model has none."""
    if source is not None:
        return cast(Any, source).group_matcher(coarse=False)
    name = type(body).__name__
    full_class = getattr(sys.modules[type(body).__module__], name.removesuffix("Features"), None)
    if (
        name.endswith("Features") and full_class is not None and hasattr(full_class, "group_matcher")
    ):  # EfficientNetFeatures, ...
        return full_class.group_matcher(body, coarse=False)  # a pure function of names in timm
    return None


def _original_names(body: nn.Module, source: nn.Module | None) -> dict[str, str]:
    """Body state_dict key -> the key the original model's checkpoint has for the same tensor."""
    if source is None:
        return {k: k for k in body.state_dict()}
    by_id: dict[int, str] = {}
    for k, t in source.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), k)  # a shared tensor goes by its first name, as named_parameters does
    return {k: by_id.get(id(t), k) for k, t in body.state_dict(keep_vars=True).items()}


def _group_name(params: list[str]) -> str:
    common = params[0].split(".")[:-1]
    for p in params[1:]:
        parts = p.split(".")
        while common and parts[: len(common)] != common:
            common.pop()
    return ".".join(common) or params[0].rsplit(".", 1)[0]


def _blocks(body: nn.Module, source: nn.Module | None, originals: dict[str, str]) -> dict[str, list[str]]:
    """timm's own groups (its ``group_matcher``) of the body's parameters, named after their modules."""
    from timm.models import group_parameters

    matcher = _matcher(body, source)
    if matcher is None:
        return {b: [f"body.{p}" for p in ps] for b, ps in structural_blocks(body).items()}
    to_body = {originals[n]: n for n, _ in body.named_parameters()}
    groups = group_parameters(source if source is not None else body, matcher)
    blocks: dict[str, list[str]] = {}
    for names in groups.values():
        names = [n for n in names if n in to_body]
        if not names:  # parts of the original model the feature extractor leaves out
            continue
        name = "stem" if not blocks else _group_name(names)
        if name in blocks:  # a group spanning parts of two modules (dla's roots, densenet's norm5)
            name = f"{names[0].rsplit('.', 1)[0]}"
        while name in blocks:
            name += "+"
        blocks[name] = [f"body.{to_body[n]}" for n in names]
    return blocks


class TimmBackbone(Backbone):
    """A timm model built with ``features_only=True``: feature maps, fine to coarse.

    Args:
        name: A timm architecture (``"convnext_atto"``), optionally with a weights tag
            (``"resnet18.a1_in1k"``).
        pretrained: ``True`` (the default tag's weights), ``False``, a tag (``"a1_in1k"``) or a path
            to a file holding the timm model's state_dict.
        in_chans: Input channels; timm adapts a pretrained first convolution for 3 to them (summed
            for 1, repeated and scaled by ``3 / in_chans`` for more).
        out_indices: Which of the model's feature levels to return (default: timm's choice).
        output_stride: The coarsest level's stride, 8, 16 or 32 (default: the model's own); passed to
            timm, whose models that take it dilate their last stages and keep every level.
        **kwargs: Passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...). A model whose
            pretrained config fixes the input size (ViTs) gets ``dynamic_img_size=True`` unless given,
            where its constructor takes it: any input whose sides are multiples of the patch size works.

    Examples:
        >>> bb = TimmBackbone("resnet18", pretrained=False)
        >>> [f.shape[1] for f in bb(torch.randn(2, 3, 64, 64))]
        [64, 64, 128, 256, 512]
        >>> TimmBackbone("convnext_atto", pretrained=False, output_stride=16).feature_info.reductions
        (4, 8, 16, 16)
        >>> vit = TimmBackbone("vit_tiny_patch16_224", pretrained=False)
        >>> [tuple(f.shape) for f in vit(torch.randn(1, 3, 96, 96))], vit.config["dynamic_img_size"]
        ([(1, 192, 6, 6), (1, 192, 6, 6), (1, 192, 6, 6)], True)
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool | str = True,
        in_chans: int = 3,
        out_indices: tuple[int, ...] | list[int] | None = None,
        output_stride: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        import timm.data

        kwargs = canonical_kwargs(kwargs)  # the config then matches the one config.json gives back
        check_output_stride(output_stride)
        arch, _, tag = name.partition(".")
        user_file = pretrained not in (True, False) and is_weights_path(pretrained)
        if pretrained not in (True, False) and not user_file:
            tag = str(pretrained)
        full_name = f"{arch}.{tag}" if tag else arch
        check_tag(arch, tag)
        self.name = arch
        indices = resolve_indices(out_indices, full_name, in_chans, kwargs)
        weights = _resolve_weights(full_name, pretrained, user_file) if pretrained is not False else None
        body, source, kwargs = _build_any_size(full_name, in_chans, indices, kwargs, output_stride, weights)
        self.body = body
        originals = _original_names(body, source)
        check_loaded(body, source, originals, full_name, in_chans, kwargs, weights)
        fmt = getattr(body, "output_fmt", "NCHW")
        self.channels_last_output = getattr(fmt, "value", fmt) == "NHWC"  # swin, mambaout, sequencer
        info = body.feature_info
        self.feature_info = FeatureInfo(channels=info.channels(), reductions=info.reduction())
        model = source if source is not None else body
        self._set_input_config(timm.data.resolve_model_data_config(body), in_chans, kwargs, model)
        self.config = {
            "pretrained": pretrained,
            "in_chans": in_chans,
            "out_indices": indices,
            "output_stride": output_stride,
            **kwargs,
        }
        self.blocks = {b: ps for b, ps in _blocks(body, source, originals).items() if ps}
        check_blocks(self.blocks, self)

    def _set_input_config(
        self, cfg: dict[str, Any], in_chans: int, kwargs: dict[str, Any], model: nn.Module
    ) -> None:
        size = kwargs.get("img_size", cfg["input_size"][-1])
        size = size[-1] if isinstance(size, (tuple, list)) else size
        self.data_config = {
            "input_size": (in_chans, size, size),
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"],
        }
        pcfg = self.body.pretrained_cfg
        self.min_input_size = int((pcfg.get("min_input_size") or (in_chans, 1, 1))[-1])
        fixed, self.input_multiple = _input_rules(model, bool(pcfg.get("fixed_input_size")))
        self.fixed_input_size = size if fixed else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[N, C_i, H / r_i, W / r_i]``, fine to coarse."""
        self.check_input(x)
        return cast(list[torch.Tensor], self._to_maps(list(self.body(x))))  # no level left out here

    def _to_maps(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if self.channels_last_output:
            return [f if f is None else f.permute(0, 3, 1, 2) for f in features]
        return features

    def split(self, k: int, levels: set[int] | None = None) -> tuple[nn.Module, nn.Module]:
        """Split before block ``k`` (or earlier, at the last module boundary before it).

        Works for timm's sequential feature wrappers (``FeatureListNet``: ResNets, ConvNeXts, RegNets,
        ...) and for ViTs read through ``forward_intermediates`` (`timm_vit_split`); see
        `TorchvisionBackbone.split` for the contract.
        """
        from timm.models import FeatureDictNet

        keep = set(range(len(self.feature_info))) if levels is None else set(levels)
        if can_split_vit(self.body):  # before transformer block k - 1: block 0 is the stem
            return vit_split(self.body, max(k - 1, 0), keep)
        if not isinstance(self.body, FeatureDictNet) or self.body.concat or self.body.grad_checkpointing:
            raise split_error(
                f"timm/{self.name}", f"{type(self.body).__name__} is not a plain module sequence"
            )
        owner = {p: i for i, ps in enumerate(self.blocks.values()) for p in ps}
        modules = list(self.body.items())
        cut = len(modules)
        for i, (name, module) in enumerate(modules):
            if any(owner[f"body.{name}.{n}"] >= k for n, _ in module.named_parameters()):
                cut = i
                break
        return _Part(self, modules[:cut], keep, last=False), _Part(self, modules[cut:], keep, last=True)


class _Part(nn.Module):
    """A run of a timm feature wrapper's modules; carries ``(x, *levels so far)`` between parts."""

    def __init__(
        self, backbone: TimmBackbone, modules: list[tuple[str, nn.Module]], keep: set[int], last: bool
    ):
        super().__init__()
        self.names = [n for n, _ in modules]
        self.layers = nn.ModuleList(m for _, m in modules)
        self.return_layers = {n: int(i) for n, i in backbone.body.return_layers.items()}
        self.keep, self.last, self.to_maps = keep, last, backbone._to_maps

    def forward(self, x: torch.Tensor, *levels: torch.Tensor | None) -> tuple | list:
        out = list(levels)
        for name, layer in zip(self.names, self.layers):
            x = layer(x)
            if name in self.return_layers:
                out.append(x if self.return_layers[name] in self.keep else None)
        return self.to_maps(out) if self.last else (x, *out)
