"""transferkit: transfer learning on images with any torchvision or timm backbone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import (
    CheckpointError,
    ExportError,
    PretrainedUnavailableError,
    UnknownNameError,
    WeightsMismatchError,
)
from .models.backbones import BACKBONES, Backbone
from .models.build import build_model
from .models.features import FeatureInfo
from .models.heads import HEADS
from .models.loading import load_model
from .models.model import TransferModel
from .models.necks import NECKS
from .models.weight_maps import convert_weights, map_by_order, reference_state_dict, rename_keys
from .training import Trainer

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "CheckpointError",
    "ExportError",
    "FeatureInfo",
    "PretrainedUnavailableError",
    "Trainer",
    "TransferModel",
    "UnknownNameError",
    "WeightsMismatchError",
    "__version__",
    "build_model",
    "convert_weights",
    "list_backbones",
    "list_heads",
    "list_necks",
    "load_model",
    "map_by_order",
    "reference_state_dict",
    "register_backbone",
    "register_head",
    "register_neck",
    "rename_keys",
]

_Factory = TypeVar("_Factory", bound=Callable[..., Any])


def register_backbone(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator: registers a backbone class or factory under ``name`` for `build_model` and `load_model`.

    It is called as ``factory(pretrained=..., in_chans=..., out_indices=..., **backbone_kwargs)`` and
    returns a module that meets the `Backbone` contract. Registering a name twice raises ``ValueError``.

    Examples:
        >>> @register_backbone("my_resnet18")
        ... def my_resnet18(pretrained=False, in_chans=3, out_indices=None):
        ...     model = build_model("resnet18", num_classes=1, pretrained=pretrained, in_chans=in_chans)
        ...     return model.backbone
        >>> build_model("my_resnet18", num_classes=2, pretrained=False).backbone.feature_info.reductions
        (2, 4, 8, 16, 32)
    """
    return BACKBONES.register(name)


def register_neck(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator: registers a neck class or factory under ``name`` (``build_model(neck=name)``).

    It is built as ``neck(feature_info, **neck_kwargs)``, maps a list of feature maps to a list of maps
    and exposes its own ``feature_info``. Registering a name twice raises ``ValueError``.

    Examples:
        >>> from torch import nn
        >>> @register_neck("doubled")
        ... class Doubled(nn.Module):
        ...     def __init__(self, feature_info):
        ...         super().__init__()
        ...         self.feature_info = feature_info
        ...     def forward(self, features):
        ...         return [2 * level for level in features]
        >>> model = build_model("resnet18", neck="doubled", num_classes=2, pretrained=False)
        >>> model(torch.randn(1, 3, 64, 64)).shape, "doubled" in list_necks()
        (torch.Size([1, 2]), True)
    """
    return NECKS.register(name)


def register_head(name: str) -> Callable[[_Factory], _Factory]:
    """Decorator: registers a head class or factory under ``name`` (``build_model(head=name)``).

    It is built as ``head(feature_info, num_classes, **head_kwargs)``, called as ``head(features,
    input_size)``, and declares its task in a ``task`` attribute (``"classification"``, ...). See
    docs/concepts.md for a complete head. Registering a name twice raises ``ValueError``.

    Examples:
        >>> from torch import nn
        >>> @register_head("first_level")
        ... class FirstLevel(nn.Module):
        ...     task = "classification"
        ...     def __init__(self, feature_info, num_classes):
        ...         super().__init__()
        ...         self.fc = nn.Linear(feature_info.channels[0], num_classes)
        ...     def forward(self, features, input_size):
        ...         return self.fc(features[0].mean(dim=(-2, -1)))
        >>> model = build_model("resnet18", head="first_level", num_classes=3, pretrained=False)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """
    return HEADS.register(name)


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted backbone names matching an fnmatch ``pattern``.

    Covers ``torchvision/*`` (every classification model), ``timm/*`` and registered backbones.

    Examples:
        >>> list_backbones("torchvision/resnet1*")
        ['torchvision/resnet101', 'torchvision/resnet152', 'torchvision/resnet18']
    """
    return BACKBONES.list(pattern)


def list_necks(pattern: str = "*") -> list[str]:
    """Sorted neck names matching an fnmatch ``pattern``, registered ones included.

    Examples:
        >>> list_necks()
        ['aspp', 'fpn_lite', 'identity', 'pan', 'simple_pyramid']
    """
    return NECKS.list(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted head names matching an fnmatch ``pattern``, registered ones included.

    Examples:
        >>> list_heads("f*")
        ['fasterrcnn', 'fcn', 'fcos']
    """
    return HEADS.list(pattern)
