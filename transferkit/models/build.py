"""`build_model`: compose a backbone (by name or module), a neck and a head into a `TransferModel`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

from torch import nn

from .arguments import check_backbone_kwargs, check_build_arguments, check_part_kwargs
from .backbones import create_backbone, resolve_name
from .classes import check_class_names
from .features import FeatureInfo
from .heads import HEADS
from .model import TransferModel
from .necks import NECKS, IdentityNeck, SimplePyramid, SimplePyramidFirst

__all__ = ["build_model"]


def _named_backbone(
    name: str,
    pretrained: bool | str,
    in_chans: int,
    out_indices: list[int] | tuple[int, ...] | None,
    output_stride: int | None,
    backbone_kwargs: dict[str, Any],
) -> tuple[nn.Module, list[int] | tuple[int, ...] | None]:
    """The backbone registered or known as ``name``, and its resolved ``out_indices``; ``backbone_kwargs``
    is completed in place with the arguments the library resolved (torchvision's transform_input, ...)."""
    check_backbone_kwargs(backbone_kwargs, library=name.startswith(("torchvision/", "timm/")))
    stride = {"output_stride": output_stride} if output_stride is not None else {}
    try:
        built = create_backbone(
            name,
            pretrained=pretrained,
            in_chans=in_chans,
            out_indices=out_indices,
            **stride,
            **backbone_kwargs,
        )
    except TypeError as err:  # the torchvision / timm builder refused a keyword argument
        if not backbone_kwargs:
            raise
        raise TypeError(f"backbone_kwargs {backbone_kwargs!r} do not fit {name}: {err}") from err
    _check_backbone(built)
    resolved = getattr(built, "config", {})
    skip = ("pretrained", "in_chans", "out_indices", "output_stride")
    backbone_kwargs.update({k: v for k, v in resolved.items() if k not in skip})
    return built, resolved.get("out_indices", out_indices)


def _check_backbone(backbone: nn.Module) -> None:
    if not isinstance(getattr(backbone, "feature_info", None), FeatureInfo):
        raise TypeError(
            f"a backbone module must have a `feature_info` (transferkit.FeatureInfo) describing its levels; "
            f"{type(backbone).__name__} has none"
        )
    if not hasattr(backbone, "blocks"):
        # torch types Module.__setattr__ for tensors and modules only; any attribute takes a dict
        backbone.blocks = {"backbone": [n for n, _ in backbone.named_parameters()]}  # type: ignore[assignment]


def _needs_simple_pyramid(neck_cls: Any, head_cls: Any, info: FeatureInfo) -> bool:
    """A head that fuses several strides, on levels of one stride (a ViT's), through a neck that builds no
    pyramid: the head would get one-stride maps, or refuse them."""
    return (
        getattr(head_cls, "needs_pyramid", False)
        and len(set(info.reductions)) == 1
        and not getattr(neck_cls, "builds_pyramid", False)
    )


def _build_neck(
    neck: str, neck_cls: Any, head_cls: Any, info: FeatureInfo, neck_kwargs: dict[str, Any]
) -> tuple[str, nn.Module]:
    """The neck module and the name ``build_model(**config)`` rebuilds it from.

    Where the head needs a pyramid and the backbone has one stride, ViTDet's simple pyramid makes it:
    in place of ``identity`` (named ``"simple_pyramid"`` from then on), in front of any other neck
    (which keeps its name: the same rule rebuilds it), so every neck works with every head on a ViT.
    """
    if not _needs_simple_pyramid(neck_cls, head_cls, info):
        return neck, neck_cls(info, **neck_kwargs)
    pyramid = SimplePyramid(info)
    if neck_cls is IdentityNeck:  # takes no kwargs (checked), and passes the pyramid through
        return "simple_pyramid", pyramid
    return neck, SimplePyramidFirst(pyramid, neck_cls(pyramid.feature_info, **neck_kwargs))


def build_model(
    backbone: str | nn.Module,
    *,
    neck: str = "identity",
    head: str = "linear",
    num_classes: int,
    pretrained: bool | str | os.PathLike[str] = True,
    in_chans: int = 3,
    out_indices: list[int] | tuple[int, ...] | None = None,
    output_stride: int | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    data_config: dict[str, Any] | None = None,
) -> TransferModel:
    """Compose a pretrained backbone, a neck and a head into a `TransferModel`.

    Args:
        backbone: ``"resnet18"`` (torchvision when it has the name, else timm), ``"torchvision/..."``,
            ``"timm/..."``, a registered name, or an ``nn.Module`` with ``feature_info`` (and ``blocks``).
        neck: ``"identity"``, ``"fpn_lite"``, ``"pan"``, ``"aspp"`` or ``"simple_pyramid"`` (see
            ``list_necks()``). On a backbone whose levels share one stride (a ViT), a head that fuses
            several strides (``fcn``, ``deeplabv3plus``, the detectors) gets ``"simple_pyramid"`` in
            place of ``"identity"`` (recorded in ``model.config``), and in front of any other neck.
        head: ``"linear"`` (classification), ``"fcn"`` or ``"deeplabv3plus"`` (segmentation), ``"fcos"``,
            ``"retinanet"``, ``"fasterrcnn"``, ``"ssdlite"`` or ``"yolo"`` (detection) (see ``list_heads()``).
        num_classes: Output classes, >= 1.
        pretrained: ``True`` (the source's default weights), ``False``, a weights tag
            (``"IMAGENET1K_V2"``, ``"a1_in1k"``) or a path to a ``.safetensors``/``.pth``/``.pt`` file
            holding the original model's state_dict (its classifier keys are ignored).
        in_chans: Input channels.
        out_indices: Which backbone levels to use (default: all).
        output_stride: Stride of the backbone's coarsest level: 8, 16 or 32 (default: the backbone's
            own). Lower than native dilates the last stages (torchvision's Bottleneck ResNets, timm models
            that take ``output_stride``), which keep their levels; others raise ValueError.
        backbone_kwargs: Passed to the torchvision/timm model builder.
        neck_kwargs: Passed to the neck (``out_channels``, ASPP's ``rates``).
        head_kwargs: Passed to the head (``dropout``, ...).
        classes: Class names by output index (``len(classes) == num_classes``); default: taken from the
            training data by the Trainer, else ``"0" .. "K-1"`` (see ``model.classes``).
        data_config: The evaluation preprocessing the model is trained at (some or all of ``input_size``,
            ``mean``, ``std``, ``interpolation``, ``crop_pct``); default: the backbone's pretrained one,
            until the Trainer records its loaders' (see ``model.data_config``).

    Returns:
        The model; ``model.config`` rebuilds it with ``build_model(**model.config)``.

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=3, pretrained=False)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
        >>> vit = build_model("timm/vit_tiny_patch16_224", head="fcn", num_classes=3, pretrained=False)
        >>> vit.config["neck"], vit(torch.randn(1, 3, 64, 64)).shape  # one stride: ViTDet's pyramid
        ('simple_pyramid', torch.Size([1, 3, 64, 64]))
    """
    check_build_arguments(locals())  # types and ranges, before anything is built
    classes = check_class_names(classes, num_classes)
    backbone_kwargs = dict(backbone_kwargs or {})
    clash = sorted({"pretrained", "in_chans", "out_indices", "output_stride"} & set(backbone_kwargs))
    if clash:
        raise ValueError(f"pass {', '.join(clash)} to build_model directly, not in backbone_kwargs")
    neck_cls, head_cls = NECKS.get(neck), HEADS.get(head)
    check_part_kwargs("neck_kwargs", neck_cls, neck_kwargs, given=1)
    check_part_kwargs("head_kwargs", head_cls, head_kwargs, given=2)
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)  # the config keeps the path as text
    if isinstance(backbone, nn.Module):
        _check_backbone(backbone)
        if output_stride is not None:
            raise ValueError("output_stride applies to backbones built by name; a module is used as it is")
        name, built = f"<module {type(backbone).__name__}>", backbone
    else:
        name = resolve_name(backbone)
        built, out_indices = _named_backbone(
            name, pretrained, in_chans, out_indices, output_stride, backbone_kwargs
        )
    info = cast(FeatureInfo, built.feature_info)  # checked by _check_backbone
    neck, neck_module = _build_neck(neck, neck_cls, head_cls, info, dict(neck_kwargs or {}))
    head_module = head_cls(neck_module.feature_info, num_classes, **(head_kwargs or {}))
    prune = getattr(neck_module, "prune", None)
    if prune is not None and hasattr(head_module, "levels"):
        prune(set(head_module.levels))  # no layer the head never reads: every parameter gets a gradient
    config = {
        "backbone": name,
        "neck": neck,
        "head": head,
        "num_classes": num_classes,
        "pretrained": pretrained,
        "in_chans": in_chans,
        "out_indices": list(out_indices) if out_indices is not None else None,
        "output_stride": output_stride,
        "backbone_kwargs": backbone_kwargs,
        "neck_kwargs": dict(neck_kwargs or {}),
        "head_kwargs": dict(head_kwargs or {}),
        "classes": classes,
    }
    model = TransferModel(built, neck_module, head_module, config)
    model.data_config = data_config
    return model
