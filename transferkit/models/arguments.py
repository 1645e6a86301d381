"""`build_model`'s arguments, checked before anything is built: each bad one is named with what to pass.

The backbone, neck and head registries check names (with close matches), the backbones check
``out_indices`` and ``output_stride`` against their levels; what is left is checked here: the types and
ranges of the plain arguments, and the keys of ``neck_kwargs`` / ``head_kwargs`` against what the neck
and head take, so that a typo is a ValueError naming the argument, not a TypeError from a constructor.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["BACKBONE_KWARGS", "check_backbone_kwargs", "check_build_arguments", "check_part_kwargs"]

# What ``backbone_kwargs`` may pass to a torchvision or timm builder: plain hyperparameters of the
# architecture. Anything else is refused, above all the keys that make a library read a file (timm's
# ``checkpoint_path`` and ``pretrained_cfg``, torchvision's ``weights``): a config read from a run folder
# or the Hub reaches the builders through here, and such a key would load (and with an old timm, unpickle)
# a file the config names. Weights come only through ``pretrained=``, which reads files safely.
BACKBONE_KWARGS = frozenset(
    {
        # timm
        "img_size", "patch_size", "drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate",
        "attn_drop_rate", "pos_drop_rate", "patch_drop_rate", "global_pool", "class_token",
        "no_embed_class", "reg_tokens", "dynamic_img_size", "dynamic_img_pad", "init_values",
        "layer_scale_init_value", "ls_init_value", "window_size", "act_layer", "norm_layer", "qkv_bias",
        "fc_norm", "pre_norm", "stem_type", "stem_width", "zero_init_last", "use_abs_pos", "use_rel_pos",
        "weight_init",
        # torchvision
        "transform_input", "aux_logits", "init_weights", "dropout", "attention_dropout",
        "stochastic_depth_prob", "replace_stride_with_dilation", "width_per_group", "groups",
        "zero_init_residual", "width_mult", "round_nearest", "dilated", "reduced_tail",
    }
)  # fmt: skip
_FILE_KEYS = {
    "checkpoint_path": "it makes timm load that file",
    "pretrained_cfg": "it can point timm's loader at a file or URL",
    "pretrained_cfg_overlay": "it can point timm's loader at a file or URL",
    "pretrained_strict": "weights load through pretrained=",
    "cache_dir": "weights load through pretrained=",
    "weights": "weights load through pretrained=",
    "features_only": "transferkit builds the feature extractor itself",
}


def check_build_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise ValueError or TypeError naming the first of `build_model`'s ``arguments`` that is wrong.

    Examples:
        >>> check_build_arguments({"backbone": "resnet18", "neck": "identity", "head": "linear",
        ...     "num_classes": 2, "pretrained": False, "in_chans": 0})
        Traceback (most recent call last):
        ValueError: in_chans must be an int >= 1 (3 for RGB images), got 0
    """
    backbone, num_classes = arguments["backbone"], arguments["num_classes"]
    in_chans, pretrained = arguments["in_chans"], arguments["pretrained"]
    if not isinstance(backbone, (str, nn.Module)):
        raise TypeError(f"backbone must be a name such as 'resnet18' or an nn.Module, got {backbone!r}")
    for part in ("neck", "head"):
        value = arguments[part]
        if not isinstance(value, str):
            raise TypeError(f"{part} must be a registered name (see list_{part}s()), got {value!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1 (3 for RGB images), got {in_chans!r}")
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(
            f"pretrained must be True, False, a weights tag or a path to a weights file, got {pretrained!r}"
        )
    if isinstance(pretrained, str) and not pretrained.strip():
        raise ValueError("pretrained is an empty string; pass True, False, a weights tag or a file path")
    for name in ("backbone_kwargs", "neck_kwargs", "head_kwargs"):
        kwargs = arguments.get(name)
        if kwargs is not None and (
            not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs)
        ):
            raise TypeError(f"{name} must be a dict of keyword arguments (str keys), got {kwargs!r}")


def check_backbone_kwargs(kwargs: Mapping[str, Any], library: bool = True) -> None:
    """Raise ValueError unless ``kwargs`` holds only plain data and, for a torchvision or timm backbone
    (``library``), only keys of `BACKBONE_KWARGS`.

    Examples:
        >>> check_backbone_kwargs({"drop_path_rate": 0.1})
        >>> check_backbone_kwargs({"checkpoint_path": "w.pth"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: backbone_kwargs may not hold checkpoint_path: it makes timm load that file. ...
    """
    for key, value in kwargs.items():
        if key in _FILE_KEYS:
            raise ValueError(
                f"backbone_kwargs may not hold {key}: {_FILE_KEYS[key]}. Pass weights with "
                "pretrained='/path/to/weights.safetensors' (read without running code)"
            )
        if library and key not in BACKBONE_KWARGS:
            close = difflib.get_close_matches(key, sorted(BACKBONE_KWARGS), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"backbone_kwargs has {key!r}, which transferkit does not pass to a torchvision or timm "
                f"builder; {hint}the accepted keys are in transferkit.models.arguments.BACKBONE_KWARGS"
            )
        if not _is_plain(value):
            raise ValueError(
                f"backbone_kwargs {key}={value!r} is not plain data (a number, string, bool, None or a "
                "list of them), so no saved config could rebuild it"
            )
        if key in ("act_layer", "norm_layer"):
            _check_layer_name(key, value)


def _is_plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)) and depth < 2:
        return all(_is_plain(v, depth + 1) for v in value)
    return False


def _check_layer_name(key: str, value: Any) -> None:
    """``act_layer`` / ``norm_layer`` must be a name timm's layer factories know."""
    from timm.layers import get_act_layer, get_norm_layer

    lookup = get_act_layer if key == "act_layer" else get_norm_layer
    try:
        known = isinstance(value, str) and lookup(value) is not None
    except (KeyError, ValueError, AssertionError, TypeError):
        known = False
    if not known:
        example = "'relu', 'gelu', 'silu'" if key == "act_layer" else "'batchnorm2d', 'layernorm2d'"
        raise ValueError(f"backbone_kwargs {key}={value!r} is not a layer name timm knows (e.g. {example})")


def check_part_kwargs(
    name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any] | None, given: int
) -> None:
    """Raise ValueError if ``kwargs`` (``neck_kwargs``, ``head_kwargs``) has keys ``factory`` does not take.

    ``given`` counts the leading parameters `build_model` passes itself (the feature info, the class count);
    a factory that takes ``**kwargs`` is not checked.

    Examples:
        >>> def linear(feature_info, num_classes, dropout=0.0): ...
        >>> check_part_kwargs("head_kwargs", linear, {"drop": 0.1}, given=2)
        Traceback (most recent call last):
        ValueError: head_kwargs has unexpected drop: linear takes dropout
    """
    if not kwargs:
        return
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin): the factory checks its own
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = [p.name for p in parameters[given:] if p.kind in named]
    unexpected = sorted(set(kwargs) - set(takes))
    if unexpected:
        what = getattr(factory, "__name__", type(factory).__name__)
        accepted = ", ".join(takes) or "no arguments"
        raise ValueError(f"{name} has unexpected {', '.join(unexpected)}: {what} takes {accepted}")
