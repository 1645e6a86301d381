"""transferkit: transfer learning on images with any torchvision or timm backbone."""

from __future__ import annotations

from .backbones import BACKBONES, Backbone
from .build import build_model
from .features import FeatureInfo
from .heads import HEADS
from .model import TransferModel
from .necks import NECKS
from .serialization import load_model
from .training import CheckpointError, Trainer
from .weight_maps import convert_weights, map_by_order, reference_state_dict, rename_keys
from .weights import PretrainedUnavailableError, WeightsMismatchError

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "CheckpointError",
    "FeatureInfo",
    "PretrainedUnavailableError",
    "Trainer",
    "TransferModel",
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

register_backbone = BACKBONES.register
register_neck = NECKS.register
register_head = HEADS.register


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted backbone names matching an fnmatch ``pattern``.

    Covers ``torchvision/*`` (every classification model), ``timm/*`` and registered backbones.

    Examples:
        >>> list_backbones("torchvision/resnet1*")
        ['torchvision/resnet101', 'torchvision/resnet152', 'torchvision/resnet18']
    """
    return BACKBONES.list(pattern)


def list_necks(pattern: str = "*") -> list[str]:
    """Sorted neck names matching ``pattern``."""
    return NECKS.list(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted head names matching ``pattern``."""
    return HEADS.list(pattern)
