"""Feature caching: run a model's frozen prefix once per sample, then train only the part after it.

A frozen prefix (the whole backbone under ``freeze("all")``, the blocks before the last ``n`` under
``last_n`` or ``gradual``) computes the same outputs for a sample every epoch. `FeatureCache` computes
them once per *dataset index*, keeps them (in memory up to a budget, then in files under a private
temporary directory) and serves each epoch's batches in the order the loader's batch sampler gives,
so shuffling loaders keep working. `TrainablePart` runs what is left: the backbone's suffix, the neck
and the head.

The cache is only correct for a deterministic dataset: sample ``i`` must be the same tensor every time
it is read. `find_random_transforms` finds the common violation (random torchvision transforms).

Random number consumption matches iterating the loader itself: every epoch makes the one draw a
DataLoader iterator makes for its workers' base seed (from ``loader.generator``, or the global
generator), then iterates ``loader.batch_sampler``, whose sampler draws as it always does. Filling the
cache uses a private generator and draws nothing from the global one. So cached and uncached runs see
the same batch order and the same dropout masks for the same seed.

Examples:
    >>> model = build_model("resnet18", num_classes=2, pretrained=False)
    >>> model.freeze()  # the whole backbone: the cache holds the levels the head reads
    >>> cache = FeatureCache(model, boundary=len(model.blocks), loader=loader, device=torch.device("cpu"))
    >>> batches = cache.epoch()  # computes the missing samples' features, then serves batches
    >>> inputs, targets = next(iter(batches))
    >>> [s.shape for s in inputs.state], inputs.input_size  # 64 px inputs, batch of 8
    ([torch.Size([8, 512, 2, 2])], (64, 64))
    >>> cache.trainable(*inputs.state, input_size=inputs.input_size).shape
    torch.Size([8, 2])
    >>> cache.close()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .cacheable import check_cacheable
from .cached_parts import CachedBatch, ScatterLevels, SelectLevels, TrainablePart
from .progress import (
    bar_renders,
    tqdm,  # tqdm.auto, imported without its notebook warning
)

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["DEFAULT_CACHE_BUDGET", "CachedBatch", "FeatureCache", "TrainablePart"]

DEFAULT_CACHE_BUDGET = 2 * 1024**3  # bytes of host memory before the cache spills to disk


# -------------------------------------------------------------------------------------------- store
class _Store:
    """Tensors of ``num_rows`` rows, one per entry; in memory up to ``budget`` bytes, then in files."""

    def __init__(self, num_rows: int, budget: int, directory: str | os.PathLike[str] | None, pin: bool):
        self.num_rows, self.budget, self.directory, self.pin = num_rows, budget, directory, pin
        self.entries: list[Tensor] = []
        self.bytes_in_memory = self.bytes_on_disk = 0
        self._tmp: str | None = None
        self._cleanup: weakref.finalize | None = None

    def allocate(self, examples: Sequence[Tensor]) -> None:
        """Room for entries shaped like ``examples`` (a batch each: the rows are ``example[0]``)."""
        for example in examples:
            shape, dtype = (self.num_rows, *example.shape[1:]), example.dtype
            size = self.num_rows * example[0].numel() * example.element_size()
            if self.bytes_in_memory + size <= self.budget:
                self.entries.append(torch.empty(shape, dtype=dtype, pin_memory=self.pin))
                self.bytes_in_memory += size
            else:
                self.entries.append(self._file_tensor(shape, dtype, size))
                self.bytes_on_disk += size

    def _file_tensor(self, shape: tuple[int, ...], dtype: torch.dtype, size: int) -> Tensor:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="transferkit-cache-", dir=self.directory)
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        path = Path(self._tmp) / f"entry{len(self.entries)}.bin"
        with open(path, "wb") as f:
            f.truncate(max(size, 1))
        numel = size // torch.empty((), dtype=dtype).element_size()
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)

    def write(self, rows: Tensor, values: Sequence[Tensor]) -> None:
        for entry, value in zip(self.entries, values, strict=True):
            entry.index_copy_(0, rows, value.to(device="cpu", dtype=entry.dtype))

    def read(self, rows: Tensor) -> list[Tensor]:
        out = []
        for entry in self.entries:
            buffer = torch.empty((len(rows), *entry.shape[1:]), dtype=entry.dtype, pin_memory=self.pin)
            out.append(torch.index_select(entry, 0, rows, out=buffer))
        return out

    def close(self) -> None:
        self.entries = []
        if self._cleanup is not None:
            self._cleanup()


# -------------------------------------------------------------------------------------------- cache
class FeatureCache:
    """Per-sample outputs of a model's frozen prefix for one loader, filled on first use.

    The prefix is the backbone before block ``boundary`` (``backbone.split``), or the whole backbone
    when ``boundary == len(model.blocks)`` (then any backbone works, splittable or not). Only the
    levels in ``model.levels_read`` are kept. Each `epoch` computes the samples its batches need that
    are not cached yet (running the prefix in eval mode over them, in order of first use, in batches
    of the loader's size and with its ``collate_fn`` and workers), then yields the batches from the
    cache.

    Args:
        model: The model; its blocks before ``boundary`` must be frozen (with ``bn="frozen"``).
        boundary: Index of the first trainable block (``len(model.blocks)``: the whole backbone).
        loader: A DataLoader over a deterministic map-style dataset (see `check_cacheable`).
        device: Where the prefix runs.
        memory_format: Memory format of the inputs on ``device``.
        autocast: Returns the autocast context the prefix runs in (as in training).
        budget: Bytes of host memory the cache may use; the rest goes to files.
        directory: Where those files go (a private temporary directory in it; default: the system's).
        split: ``backbone.split(boundary, levels)``'s result, when the caller already has it.
        check_targets: Called as ``check_targets(targets, where)`` on every batch that fills the cache.
        progress: Show a progress bar while filling.

    Raises:
        TypeError, ValueError: The loader cannot be cached (see `check_cacheable`).
        NotImplementedError: ``boundary < len(model.blocks)`` and the backbone cannot be split there.
    """

    def __init__(
        self,
        model: TransferModel,
        boundary: int,
        loader: DataLoader,
        *,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        budget: int = DEFAULT_CACHE_BUDGET,
        directory: str | os.PathLike[str] | None = None,
        split: tuple[nn.Module, nn.Module] | None = None,
        check_targets: Callable[[Tensor, str], None] | None = None,
        progress: bool = False,
    ) -> None:
        self.loader = check_cacheable(loader)
        num_blocks = len(model.blocks)
        if not 0 < boundary <= num_blocks:
            raise ValueError(f"boundary must be in [1, {num_blocks}] (a frozen prefix), got {boundary}")
        levels = sorted(model.levels_read)
        if boundary == num_blocks:
            prefix: nn.Module = SelectLevels(model.backbone, levels)
            suffix: nn.Module = ScatterLevels(levels, len(model.backbone.feature_info))  # type: ignore[arg-type]
        else:
            splitter = getattr(model.backbone, "split", None)
            if split is None and splitter is None:
                raise NotImplementedError(
                    f"{type(model.backbone).__name__} has no split(); cache_features with blocks still "
                    "frozen inside the backbone needs one. Freeze the whole backbone (freeze('all')) or "
                    "train with cache_features=False"
                )
            prefix, suffix = split if split is not None else splitter(boundary, levels=set(levels))  # type: ignore[misc]
        self.model, self.boundary, self.prefix = model, boundary, prefix
        self.trainable = TrainablePart(suffix, model.neck, model.head)
        self.device, self.memory_format, self.autocast = device, memory_format, autocast
        self.check_targets, self.progress = check_targets, progress
        self.store = _Store(len(loader.dataset), budget, directory, pin=device.type == "cuda")  # type: ignore[arg-type]
        self.filled = torch.zeros(len(loader.dataset), dtype=torch.bool)  # type: ignore[arg-type]
        self.input_size: tuple[int, int] | None = None
        self._layout: list[int | None] | None = None  # state position -> store entry (None: a None)
        self._drew_seed = False

    # ------------------------------------------------------------------------------------ epochs
    def epoch(self) -> _CachedEpoch:
        """This epoch's batches, ``(CachedBatch, targets)``, in the loader's order; fills what is missing."""
        batches = self._batch_indices()
        seen, todo = self.filled.clone(), []
        for rows in batches:  # missing samples in order of first use: shuffle=False fills batch by batch
            new = list(dict.fromkeys(rows[~seen[rows]].tolist()))
            seen[new] = True
            todo.extend(new)
        if todo:
            batch_size = self.loader.batch_size or max(len(rows) for rows in batches)
            self._fill(torch.as_tensor(todo, dtype=torch.long), batch_size)
        return _CachedEpoch(self, batches)

    def _batch_indices(self) -> list[Tensor]:
        loader = self.loader
        reused = loader.persistent_workers and loader.num_workers > 0 and self._drew_seed
        if not reused:  # the base-seed draw a DataLoader iterator makes when it is created
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
            self._drew_seed = True
        return [torch.as_tensor(list(b), dtype=torch.long) for b in loader.batch_sampler]  # type: ignore[union-attr]

    @torch.no_grad()
    def _fill(self, indices: Tensor, batch_size: int) -> None:
        loader = self.loader
        options: dict[str, Any] = {
            "collate_fn": loader.collate_fn,
            "num_workers": loader.num_workers,
            "pin_memory": loader.pin_memory,
            "worker_init_fn": loader.worker_init_fn,
            "multiprocessing_context": loader.multiprocessing_context,
            "timeout": loader.timeout,
        }
        if loader.num_workers > 0:
            options["prefetch_factor"] = loader.prefetch_factor
        order = indices.tolist()
        # A private generator: filling must not move the global RNG (the uncached run does not fill).
        filler = DataLoader(
            loader.dataset, batch_size=batch_size, sampler=order, generator=torch.Generator(), **options
        )
        was_training = self.model.training
        self.model.eval()  # the prefix holds frozen blocks only: eval is their mode in training too
        # A bar by hand: tqdm(filler) would build a second DataLoader iterator (tqdm.auto calls iter()).
        shown = self.progress and bar_renders()
        bar = tqdm(total=len(filler), desc="caching features", leave=False, disable=not shown)
        try:
            start = 0
            for batch in filler:
                inputs, targets = _unpack(batch)
                rows = indices[start : start + len(targets)]
                start += len(targets)
                if self.check_targets is not None:
                    self.check_targets(targets, f"dataset indices {rows[:4].tolist()}...")
                self._write(rows, inputs, targets)
                bar.update()
        finally:
            bar.close()
            self.model.train(was_training)
        self.filled[indices] = True

    def _write(self, rows: Tensor, inputs: Tensor, targets: Tensor) -> None:
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        if self.input_size is None:
            self.input_size = size
        elif size != self.input_size:
            raise ValueError(
                f"cache_features=True needs every input the same size; got {size} after {self.input_size}. "
                "Resize the images to one size (transferkit.data transforms do), or use cache_features=False"
            )
        inputs = inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)
        with self.autocast():
            state = self.prefix(inputs)
        state = (state,) if isinstance(state, Tensor) else tuple(state)
        layout, unique = _layout(state)
        if self._layout is None:
            self._layout = layout
            self.store.allocate([*unique, targets])
        elif layout != self._layout:
            raise RuntimeError("the frozen prefix returned a different structure for another batch")
        self.store.write(rows, [*unique, targets])

    def gather(self, rows: Tensor) -> tuple[CachedBatch, Tensor]:
        """The cached batch and targets of dataset indices ``rows`` (all filled), on the CPU."""
        *entries, targets = self.store.read(rows)
        state = tuple(None if j is None else entries[j] for j in self._layout)  # type: ignore[union-attr]
        return CachedBatch(state, self.input_size), targets  # type: ignore[arg-type]

    @property
    def nbytes(self) -> tuple[int, int]:
        """Bytes held ``(in memory, on disk)``."""
        return self.store.bytes_in_memory, self.store.bytes_on_disk

    def close(self) -> None:
        """Release the memory and delete the files."""
        self.store.close()
        self.filled.zero_()
        self._layout = None


class _CachedEpoch:
    """One epoch of cached batches: ``len()`` and iteration, like the loader it replaces."""

    def __init__(self, cache: FeatureCache, batches: list[Tensor]) -> None:
        self.cache, self.batches = cache, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[CachedBatch, Tensor]]:
        for rows in self.batches:
            yield self.cache.gather(rows)


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("cache_features=True needs batches of (inputs, targets)")
    inputs, targets = batch
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(
            "cache_features=True needs tensor inputs and targets in each batch, got "
            f"{type(inputs).__name__} and {type(targets).__name__}"
        )
    return inputs, targets


def _layout(state: tuple[Tensor | None, ...]) -> tuple[list[int | None], list[Tensor]]:
    """Map each state position to a unique tensor (a tensor returned twice is stored once)."""
    unique: list[Tensor] = []
    where: dict[int, int] = {}
    layout: list[int | None] = []
    for s in state:
        if s is None:
            layout.append(None)
            continue
        if id(s) not in where:
            where[id(s)] = len(unique)
            unique.append(s)
        layout.append(where[id(s)])
    return layout, unique
