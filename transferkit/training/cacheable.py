"""Can a loader be cached? Feature caching needs sample ``i`` to be the same tensor every epoch.

`find_random_transforms` finds the common violation (random torchvision transforms) and
`check_cacheable` turns it, and loaders that cannot be indexed, into clear errors.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["check_cacheable", "find_random_transforms"]

# torchvision transforms that draw random numbers without "Random" in their name.
_RANDOM_TRANSFORMS = frozenset(
    {
        "ColorJitter",
        "AutoAugment",
        "RandAugment",
        "TrivialAugmentWide",
        "AugMix",
        "ElasticTransform",
        "ScaleJitter",
        "MixUp",
        "CutMix",
        "GaussianNoise",
    }
)
# Transforms that are random only when a parameter is a range: GaussianBlur's sigma, JPEG's quality.
_RANGE_PARAMETERS = {"GaussianBlur": "sigma", "JPEG": "quality"}
# Attributes through which datasets and transforms hold other datasets and transforms.
_CHILDREN = ("dataset", "datasets", "transform", "transforms", "target_transform", "transform_fn")


# ------------------------------------------------------------------------------- augmentation check
def _is_random_transform(obj: object) -> bool:
    cls = type(obj)
    if not cls.__module__.startswith("torchvision.transforms"):
        return False
    name = cls.__name__
    if name.startswith("Random") or name in _RANDOM_TRANSFORMS:
        return True
    value = getattr(obj, _RANGE_PARAMETERS.get(name, ""), None)
    return isinstance(value, (tuple, list)) and len(value) == 2 and value[0] != value[1]


def find_random_transforms(dataset: object) -> list[str]:
    """Where ``dataset`` applies random torchvision transforms, as ``"path: ClassName"`` strings.

    Follows wrapped datasets (``Subset.dataset``, ``ConcatDataset.datasets``), ``transform`` /
    ``transforms`` / ``target_transform`` attributes, ``Compose`` lists and ``nn.Module`` children.
    Random transforms from other libraries (albumentations, custom code) are not found.

    Examples:
        >>> from torchvision.transforms import v2
        >>> ds = SyntheticShapes(4, transform=v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip()]))
        >>> find_random_transforms(Subset(ds, [0, 1]))
        ['dataset.dataset.transform.transforms[1]: RandomHorizontalFlip']
    """
    found: list[str] = []
    seen: set[int] = set()

    def visit(obj: object, path: str, depth: int) -> None:
        if obj is None or id(obj) in seen or depth > 12:
            return
        seen.add(id(obj))
        if _is_random_transform(obj):
            found.append(f"{path}: {type(obj).__name__}")
            return
        if isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, f"{path}[{i}]", depth + 1)
            return
        if isinstance(obj, (str, bytes, Tensor)) or callable(obj) and not hasattr(obj, "__dict__"):
            return
        for attr in _CHILDREN:
            try:
                child = getattr(obj, attr, None)
            except Exception:  # a dataset property that fails on access is not a transform
                continue
            if type(child).__name__ == "StandardTransform":
                continue  # VisionDataset's copy of transform/target_transform, made once at construction
            if child is not None and not isinstance(child, Tensor) and not _is_bound_method(child):
                visit(child, f"{path}.{attr}", depth + 1)
        if isinstance(obj, nn.Module):
            for name, child in obj.named_children():
                visit(child, f"{path}.{name}", depth + 1)

    visit(dataset, "dataset", 0)
    return found


def _is_bound_method(obj: object) -> bool:
    return hasattr(obj, "__self__") and hasattr(obj, "__func__")


def check_cacheable(loader: object, name: str = "train") -> DataLoader:
    """Raise unless ``loader`` is a DataLoader over a deterministic map-style dataset; return it."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"cache_features=True needs the {name} loader to be a torch.utils.data.DataLoader (the cache "
            f"maps its batches back to dataset indices), got {type(loader).__name__}; wrap the data in a "
            "DataLoader or use cache_features=False"
        )
    if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        raise ValueError(
            f"cache_features=True needs a map-style dataset and batch_size= (or batch_sampler=) in the "
            f"{name} loader, because features are cached per dataset index; use cache_features=False "
            "for an IterableDataset or batch_size=None"
        )
    randoms = find_random_transforms(loader.dataset)
    if randoms:
        raise ValueError(
            f"cache_features=True needs a deterministic {name} loader, but its dataset applies random "
            f"transforms ({'; '.join(randoms)}). Features are computed once per sample, so the augmentation "
            "would be frozen at its first draw. Use deterministic transforms for a cached run (e.g. "
            "transferkit.data.build_transforms(model.data_config, train=False)), or cache_features=False."
        )
    return loader
