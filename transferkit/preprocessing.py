"""A model's evaluation preprocessing: input size, mean, std, interpolation, crop fraction.

A data config is a plain dict, as timm's ``resolve_data_config`` gives it:

- ``input_size``: ``(channels, height, width)`` of the tensor the model sees;
- ``mean`` / ``std``: per-channel normalisation of pixels scaled to [0, 1];
- ``interpolation``: how images are resized (``"bilinear"``, ``"bicubic"``, ...);
- ``crop_pct``: classification evaluation resizes the shorter side to ``size / crop_pct`` and crops the
  centre ``size`` (segmentation resizes the whole image to ``size``).

A backbone carries the config of its pretrained weights; a trained model carries the one it was trained
at (``model.data_config``): the Trainer records the config of the loaders `transferkit.data` builds, and
``model.save`` / ``load_model``, ``predict``, ``evaluate`` and ``export`` all use it.

Examples:
    >>> resolve_data_config({"input_size": (3, 224, 224)}, image_size=64)["input_size"]
    (3, 64, 64)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Subset
from torchvision.transforms import InterpolationMode

__all__ = [
    "DATA_CONFIG_KEYS",
    "DEFAULT_DATA_CONFIG",
    "declare_data_config",
    "loader_data_config",
    "resolve_data_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet's per-channel RGB mean (pixels in [0, 1]), which most pretrained weights expect.

Examples:
    >>> IMAGENET_MEAN
    (0.485, 0.456, 0.406)
"""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet's per-channel RGB standard deviation (pixels in [0, 1]), paired with `IMAGENET_MEAN`.

Examples:
    >>> IMAGENET_STD
    (0.229, 0.224, 0.225)
"""
DEFAULT_DATA_CONFIG: Mapping[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
    "crop_pct": 0.875,
}
"""The evaluation preprocessing of a backbone that states none: 224 px, ImageNet's mean and std,
bilinear resizing of the short side to ``224 / crop_pct`` (256 px), then a centre crop.

Examples:
    >>> DEFAULT_DATA_CONFIG["input_size"], DEFAULT_DATA_CONFIG["crop_pct"]
    ((3, 224, 224), 0.875)
"""
DATA_CONFIG_KEYS = tuple(DEFAULT_DATA_CONFIG)
_MAX_SIDE = 16384  # a larger side in a config is damage, not a model's input


def resolve_data_config(
    data_config: Mapping[str, Any] | None,
    image_size: int | None = None,
    *,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete, checked data config: ``data_config`` over ``base`` (default ImageNet's), at ``image_size``.

    Args:
        data_config: Some or all of ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``;
            ``input_size`` may be ``(height, width)`` (the channels come from ``base``).
        image_size: A square side that overrides the input size.
        base: Where missing keys come from (a backbone's pretrained config).

    Returns:
        A new dict with all five keys; sizes and statistics as tuples.

    Raises:
        ValueError: An unknown key, a size that is not positive, statistics of the wrong length, a ``std``
            of 0, an unknown interpolation or ``crop_pct`` outside (0, 1]; the message names the key.

    Examples:
        >>> cfg = resolve_data_config({"input_size": (64, 64), "crop_pct": 1.0})
        >>> cfg["input_size"], cfg["crop_pct"], cfg["mean"]
        ((3, 64, 64), 1.0, (0.485, 0.456, 0.406))
        >>> resolve_data_config({"size": 64})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: data_config has unknown key(s) ['size']; it takes input_size, mean, std, ...
    """
    if data_config is not None and not isinstance(data_config, Mapping):
        keys = ", ".join(DATA_CONFIG_KEYS)
        raise TypeError(f"data_config must be a dict (keys {keys}), got {data_config!r:.80}")
    given = dict(data_config or {})
    unknown = sorted(set(given) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"data_config has unknown key(s) {unknown}; it takes {', '.join(DATA_CONFIG_KEYS)}")
    merged = {**DEFAULT_DATA_CONFIG, **{k: v for k, v in (base or {}).items() if k in DATA_CONFIG_KEYS}}
    size = given.get("input_size", merged["input_size"])
    if not isinstance(size, (list, tuple)) or len(size) not in (2, 3) or not all(_is_int(v) for v in size):
        raise ValueError(f"data_config input_size must be (channels, height, width), got {size!r:.80}")
    if len(size) == 2:
        size = (int(merged["input_size"][0]), *size)
    channels, height, width = (int(v) for v in size)
    if image_size is not None:
        if not _is_int(image_size) or image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size!r}")
        height = width = int(image_size)
    if not (1 <= channels <= 1024 and 1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        raise ValueError(f"data_config input_size {(channels, height, width)} is out of range")
    mean = _stats(given.get("mean"), merged["mean"], channels, "mean")
    std = _stats(given.get("std"), merged["std"], channels, "std")
    if any(v <= 0 for v in std):
        raise ValueError(f"data_config std must be > 0 for every channel, got {std}")
    interpolation = given.get("interpolation", merged.get("interpolation", "bilinear"))
    valid = [mode.value for mode in InterpolationMode]
    if interpolation not in valid:
        raise ValueError(f"data_config interpolation {interpolation!r} is unknown; use one of {valid}")
    crop_pct = given.get("crop_pct", merged.get("crop_pct", 0.875))
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"data_config crop_pct must be a number in (0, 1], got {crop_pct!r}")
    return {
        "input_size": (channels, height, width),
        "mean": mean,
        "std": std,
        "interpolation": str(interpolation),
        "crop_pct": float(crop_pct),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stats(given: Any, default: Any, channels: int, name: str) -> tuple[float, ...]:
    """``mean`` or ``std`` for ``channels``: the given values (one per channel, or one for all), else the
    default's; RGB statistics average into one value per channel for any other channel count."""
    values = default if given is None else given
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in values
    ):
        raise ValueError(f"data_config {name} must be a list of numbers, got {values!r:.80}")
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1 or (len(values) == 3 and (channels == 1 or given is None)):
        return (sum(values) / len(values),) * channels
    raise ValueError(f"data_config {name} has {len(values)} values for {channels} channels; give {channels}")


def loader_data_config(loader: Any) -> dict[str, Any] | None:
    """The preprocessing a loader's dataset declares in ``dataset.data_config`` (through ``Subset``), or None.

    The loaders of `transferkit.data` declare theirs: the evaluation preprocessing at the size they give.
    """
    dataset = getattr(loader, "dataset", loader)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    config = getattr(dataset, "data_config", None)
    return dict(config) if isinstance(config, Mapping) else None


def declare_data_config(dataset: Any, data_config: Mapping[str, Any], image_size: int | None = None) -> Any:
    """Record on ``dataset`` (as ``dataset.data_config``) the evaluation preprocessing its items follow.

    The Trainer reads it back (`loader_data_config`) and saves it with the model, so ``predict`` and
    ``export`` preprocess as training did. Keys other than `DATA_CONFIG_KEYS` (timm's ``crop_mode``) are
    left out. Returns ``dataset``.
    """
    known = {key: data_config[key] for key in DATA_CONFIG_KEYS if key in data_config}
    dataset.data_config = resolve_data_config(known, image_size)
    return dataset


def record_data_config(model: Any, train: Any, val: Any = None) -> bool:
    """Set ``model.data_config`` to what the loaders declare (`declare_data_config`), val's first.

    Returns:
        True when neither declares one and the model has none of its own: the input size is then taken
        from the first training batch (`record_input_size`).
    """
    for loader in (val, train):
        config = loader_data_config(loader) if loader is not None else None
        if config is not None:
            model.data_config = config
            return False
    return model.config.get("data_config") is None


def record_input_size(model: Any, inputs: Any) -> None:
    """Record the height and width of a batch ``[N, C, H, W]`` as ``model.data_config``'s input size, when
    they differ from it: loaders that do not declare their preprocessing still give the size trained at."""
    shape: Sequence[int] = getattr(inputs, "shape", ())
    if len(shape) != 4:
        return
    config = model.data_config
    if tuple(config["input_size"][-2:]) != tuple(shape[-2:]):
        model.data_config = {**config, "input_size": (int(shape[1]), int(shape[2]), int(shape[3]))}
