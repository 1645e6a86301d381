"""The Trainer's side of ``cache_features=True``: which prefix is frozen now, and its caches.

`PrefixCaches` keeps one `FeatureCache` per loader role (``"train"``, ``"val"``) at the current
boundary (the first trainable block), and hands each pass a `Feed`: the cached batches and the trainable
part that takes them, or the loader itself for the model. When ``gradual`` unfreezes blocks the boundary
moves, the stale caches are dropped and rebuilt there; once nothing is frozen the loaders are used directly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .cacheable import check_cacheable, find_random_transforms
from .cached_parts import CachedInputs
from .feature_cache import DEFAULT_CACHE_BUDGET, CachedBatch, FeatureCache, TrainablePart
from .loaders import Feed

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = [
    "DEFAULT_CACHE_BUDGET",
    "CachedBatch",
    "FeatureCache",
    "PrefixCaches",
    "TrainablePart",
    "check_cacheable",
    "find_random_transforms",
]


class PrefixCaches:
    """Feature caches of a model's frozen prefix, one per loader role, following the freeze state.

    Args:
        model: The model being trained.
        device: Where the prefix runs.
        memory_format: Memory format of inputs on ``device``.
        autocast: Returns the autocast context the prefix runs in.
        budget: Host-memory bytes each cache may hold before spilling to files.
        directory: Where spilled files go.
        check_targets: Called as ``check_targets(targets, where)`` on every batch that fills a cache.
        progress: Show a bar while filling.
        compile: Run the part after the prefix through ``torch.compile``.
    """

    def __init__(
        self,
        model: TransferModel,
        *,
        device: torch.device,
        memory_format: torch.memory_format,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        budget: int = DEFAULT_CACHE_BUDGET,
        directory: str | os.PathLike[str] | None = None,
        check_targets: Callable[[Tensor, str], None] | None = None,
        progress: bool = False,
        compile: bool = False,
    ) -> None:
        self.model, self.device, self.memory_format, self.autocast = model, device, memory_format, autocast
        self.budget, self.directory, self.check_targets = budget, directory, check_targets
        self.progress, self.compile = progress, compile
        self._caches: dict[str, FeatureCache] = {}
        self._splits: dict[int, tuple[nn.Module, nn.Module]] = {}  # boundary -> backbone.split result
        self.net: nn.Module | None = None  # the part after the cached prefix (maybe compiled), on batches

    def boundary(self) -> int:
        """Index of the first trainable block: the frozen prefix is the blocks before it."""
        trainable = set(self.model.trainable_blocks)
        return next((i for i, b in enumerate(self.model.blocks) if b in trainable), len(self.model.blocks))

    def check(self, train: Any, start: int, epochs: int) -> None:
        """Fail before training when caching cannot work: bad loader, norm layers, unsplittable backbone."""
        from ..tasks import get_task

        task = get_task(self.model.task)
        if not task.cacheable:
            raise ValueError(
                f"cache_features=True does not support {task.name} models: the cached path runs the head "
                "without the targets a detector's training step needs (and boxes move with every "
                "augmenting flip or resize); use cache_features=False"
            )
        freeze = self.model.freeze_state()
        if freeze.get("bn", "frozen") not in ("frozen", "frozen_all"):
            raise ValueError(
                "cache_features=True needs the frozen blocks' norm layers in eval mode, but the model was "
                "frozen with bn='train' (their statistics change every batch); freeze with bn='frozen' "
                "or use cache_features=False"
            )
        check_cacheable(train, "train")
        boundaries = {self.boundary()}
        if freeze.get("policy") == "gradual":  # every boundary the schedule will reach
            try:
                for epoch in range(start, epochs):
                    self.model.apply_schedule(epoch)
                    boundaries.add(self.boundary())
            finally:
                self.model.load_freeze_state(freeze)
        for k in sorted(boundaries):
            if 0 < k < len(self.model.blocks):
                self._split(k)  # raises NotImplementedError now rather than in a later epoch

    def _split(self, k: int) -> tuple[nn.Module, nn.Module]:
        if k not in self._splits:
            split = getattr(self.model.backbone, "split", None)
            if split is None:
                raise NotImplementedError(
                    f"{type(self.model.backbone).__name__} has no split(), so cache_features=True works "
                    "only with the whole backbone frozen (freeze('all')); or use cache_features=False"
                )
            self._splits[k] = split(k, levels=self.model.levels_read)
        return self._splits[k]

    def epoch(self, loader: Any, role: str) -> Feed:
        """This epoch's batches from the cache of ``role`` (rebuilt if the boundary moved) with the module
        that takes them, or ``Feed(loader)`` where nothing is cached."""
        k = self.boundary()
        cache = self._caches.get(role)
        if cache is not None and cache.boundary != k:
            cache.close()  # the frozen prefix changed: its cached outputs are stale
            del self._caches[role]
            cache = None
        if k == 0:
            return Feed(loader)  # nothing is frozen: nothing to cache
        if cache is None:
            if role != "train":
                try:
                    check_cacheable(loader, role)
                except (TypeError, ValueError):
                    return Feed(loader)  # caching validation is an optimisation only
            cache = FeatureCache(
                self.model,
                k,
                loader,
                device=self.device,
                memory_format=self.memory_format,
                autocast=self.autocast,
                budget=self.budget,
                directory=self.directory,
                split=self._split(k) if k < len(self.model.blocks) else None,
                check_targets=self.check_targets,
                progress=self.progress,
            )
            self._caches[role] = cache
            if role == "train" or self.net is None:
                part = cast(nn.Module, torch.compile(cache.trainable)) if self.compile else cache.trainable
                self.net = CachedInputs(part)
        return Feed(cache.epoch(), self.net, checked=True)

    def close(self) -> None:
        """Releases every cache's memory and files."""
        for cache in self._caches.values():
            cache.close()
        self._caches, self._splits, self.net = {}, {}, None
