"""Every timm model that supports ``features_only`` as a backbone.

timm is imported on first use, so that ``import transferkit`` (and torchvision backbones) do not load it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ..features import FeatureInfo
from ..weights import fetch_hf, fetch_url, is_weights_path, load_matching, read_state_dict
from .base import (
    Backbone,
    cannot_dilate,
    canonical_kwargs,
    check_blocks,
    check_out_indices,
    check_output_stride,
    split_error,
    structural_blocks,
)

__all__ = ["TimmBackbone", "timm_names"]


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    """Every timm architecture that supports ``features_only`` (in timm 1.0 that is all of them; the
    registry smoke test builds one model of each timm module to keep this honest)."""
    import timm

    return tuple(timm.list_models())


def _full_model(arch: str, in_chans: int, kwargs: dict[str, Any]) -> nn.Module:
    """The whole timm model on the meta device: its names, group matcher, levels and config."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(arch, pretrained=False, in_chans=in_chans, **kwargs)
    except (NotImplementedError, RuntimeError):  # builders that need real tensors
        return timm.create_model(arch, pretrained=False, in_chans=in_chans, **kwargs).to("meta")


def _full_model_at(
    name: str, in_chans: int, kwargs: dict[str, Any], output_stride: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The full model at ``output_stride`` and the ``create_model`` arguments that give it."""
    check_output_stride(output_stride)
    full = _full_model(name, in_chans, kwargs)
    native = full.feature_info[-1]["reduction"] if output_stride is not None else None
    if output_stride in (None, native):
        return full, kwargs
    kwargs = {**kwargs, "output_stride": output_stride}
    model = f"timm/{name.partition('.')[0]}"
    try:
        full = _full_model(name, in_chans, kwargs)
    except (TypeError, AssertionError, ValueError, NotImplementedError) as err:
        raise cannot_dilate(model, output_stride, native) from err  # no such argument, or not this value
    if full.feature_info[-1]["reduction"] != output_stride:  # took the argument but does not dilate
        raise cannot_dilate(model, output_stride, native)
    return full, kwargs


def _norm(name: str) -> str:
    return name.replace("_", ".")


def _name_map(full: nn.Module, body: nn.Module) -> dict[str, str] | None:
    """Original parameter/buffer name -> name in the feature wrapper (which flattens and prefixes)."""
    originals = {_norm(k): k for k in full.state_dict()}
    mapping = {}
    for key in body.state_dict():
        parts = key.split(".")
        for i in range(len(parts)):  # wrappers may add a prefix ("model.")
            original = originals.get(_norm(".".join(parts[i:])))
            if original is not None:
                mapping[original] = key
                break
        else:
            return None
    return mapping


def _group_name(params: list[str]) -> str:
    common = params[0].split(".")[:-1]
    for p in params[1:]:
        parts = p.split(".")
        while common and parts[: len(common)] != common:
            common.pop()
    return ".".join(common) or params[0].rsplit(".", 1)[0]


def _blocks(full: nn.Module, body: nn.Module, mapping: dict[str, str] | None) -> dict[str, list[str]]:
    body_params = [n for n, _ in body.named_parameters()]
    if mapping is not None and hasattr(full, "group_matcher"):
        from timm.models._manipulate import group_with_matcher

        inverse = {v: k for k, v in mapping.items()}
        originals = [inverse[n] for n in body_params]
        groups = group_with_matcher(((n, None) for n in originals), full.group_matcher(coarse=False))
        blocks: dict[str, list[str]] = {}
        for i, names in enumerate(groups.values()):
            name = "stem" if i == 0 else _group_name(names)
            if name in blocks:  # a group spanning parts of two modules (dla's roots, densenet's norm5)
                name = f"{names[0].rsplit('.', 1)[0]}"
            while name in blocks:
                name += "+"
            blocks[name] = [f"body.{mapping[n]}" for n in names]
        return blocks
    return {b: [f"body.{p}" for p in ps] for b, ps in structural_blocks(body).items()}


class TimmBackbone(Backbone):
    """A timm model built with ``features_only=True``: feature maps, fine to coarse.

    Args:
        name: A timm architecture (``"convnext_atto"``), optionally with a weights tag
            (``"resnet18.a1_in1k"``).
        pretrained: ``True`` (the default tag's weights), ``False``, a tag (``"a1_in1k"``) or a path
            to a file holding the timm model's state_dict.
        in_chans: Input channels; a pretrained first convolution for 3 is adapted to them
            (`transferkit.input_channels.adapt_input_conv`).
        out_indices: Which of the model's feature levels to return (default: timm's choice).
        output_stride: The coarsest level's stride, 8, 16 or 32 (default: the model's own); passed to
            timm, whose models that take it dilate their last stages and keep every level.
        **kwargs: Passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...).

    Examples:
        >>> bb = TimmBackbone("resnet18", pretrained=False)
        >>> [f.shape[1] for f in bb(torch.randn(2, 3, 64, 64))]
        [64, 64, 128, 256, 512]
        >>> TimmBackbone("convnext_atto", pretrained=False, output_stride=16).feature_info.reductions
        (4, 8, 16, 16)
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
        import timm
        import timm.data

        kwargs = canonical_kwargs(kwargs)  # the config then matches the one config.json gives back
        arch, _, tag = name.partition(".")
        if pretrained not in (True, False) and not is_weights_path(pretrained):
            tag = str(pretrained)
        full_name = f"{arch}.{tag}" if tag else arch
        valid = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag and tag not in valid:
            raise ValueError(
                f"unknown weights tag {tag!r} for timm/{arch}; valid tags: {', '.join(valid) or 'none'}"
            )
        self.name = arch
        full, build_kwargs = _full_model_at(full_name, in_chans, kwargs, output_stride)
        levels = len(full.feature_info)
        indices = check_out_indices(out_indices, levels) if out_indices is not None else None
        extra = {"out_indices": indices} if indices is not None else {}
        self.body = timm.create_model(
            full_name, pretrained=False, features_only=True, in_chans=in_chans, **extra, **build_kwargs
        )
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_output = getattr(fmt, "value", fmt) == "NHWC"  # swin, mambaout, sequencer
        info = self.body.feature_info
        self.feature_info = FeatureInfo(channels=info.channels(), reductions=info.reduction())
        cfg = timm.data.resolve_model_data_config(full)
        size = kwargs.get("img_size", cfg["input_size"][-1])
        size = size[-1] if isinstance(size, (tuple, list)) else size
        self.data_config = {
            "input_size": (in_chans, size, size),
            "mean": tuple(cfg["mean"]),
            "std": tuple(cfg["std"]),
            "interpolation": cfg["interpolation"],
            "crop_pct": cfg["crop_pct"],
        }
        pcfg = full.pretrained_cfg
        self.min_input_size = int((pcfg.get("min_input_size") or (in_chans, 1, 1))[-1])
        self.fixed_input_size = (
            size if pcfg.get("fixed_input_size") and not kwargs.get("dynamic_img_size") else None
        )
        self.config = {
            "pretrained": pretrained,
            "in_chans": in_chans,
            "out_indices": indices,
            "output_stride": output_stride,
            **kwargs,
        }

        mapping = _name_map(full, self.body)
        if pretrained is not False:
            self._load(full, full_name, pretrained, mapping)
        self.blocks = {b: ps for b, ps in _blocks(full, self.body, mapping).items() if ps}
        check_blocks(self.blocks, self)

    def _load(self, full: nn.Module, full_name: str, pretrained: Any, mapping: dict[str, str] | None) -> None:
        if mapping is None:
            raise ValueError(
                f"cannot map timm/{full_name}'s weights onto its feature extractor; use pretrained=False"
            )
        model = f"timm/{full_name}"
        if is_weights_path(pretrained):
            path = pretrained
        else:
            cfg = full.pretrained_cfg
            if cfg.get("hf_hub_id"):
                files = (
                    (cfg["hf_hub_filename"],)
                    if cfg.get("hf_hub_filename")
                    else ("model.safetensors", "pytorch_model.bin")
                )
                path = fetch_hf(cfg["hf_hub_id"], model=model, filenames=files)
            elif cfg.get("url"):
                path = fetch_url(cfg["url"], model=model)
            else:
                raise ValueError(
                    f"timm has no pretrained weights for {model}; use pretrained=False or a weights file"
                )
        classifier = full.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        known = set(full.state_dict())
        first = full.pretrained_cfg.get("first_conv") or ()
        first = (first,) if isinstance(first, str) else tuple(first)
        load_matching(
            self.body,
            read_state_dict(path),
            source=f"weights for {model} ({path})",
            rename=lambda k: mapping.get(k) if k in known else k,
            ignore=tuple(f"{c}." for c in classifier),
            input_convs=tuple(mapping.get(f"{c}.weight", f"{c}.weight") for c in first),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[N, C_i, H / r_i, W / r_i]``, fine to coarse."""
        self.check_input(x)
        return self._to_maps(list(self.body(x)))

    def _to_maps(self, features: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        if self.channels_last_output:
            return [f if f is None else f.permute(0, 3, 1, 2) for f in features]
        return features

    def split(self, k: int, levels: set[int] | None = None) -> tuple[nn.Module, nn.Module]:
        """Split before block ``k`` (or earlier, at the last module boundary before it).

        Works for timm's sequential feature wrappers (``FeatureListNet``: ResNets, ConvNeXts, RegNets,
        ...); see `TorchvisionBackbone.split` for the contract.
        """
        from timm.models._features import FeatureDictNet

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
        keep = set(range(len(self.feature_info))) if levels is None else set(levels)
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
