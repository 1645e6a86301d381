"""Epoch-keyed shuffling and per-sample augmentation seeds, so a resumed run repeats the original exactly.

A DataLoader's worker processes draw the random numbers of augmentation from their own generators. With
persistent workers those generators run on from epoch to epoch; a run resumed in a new process starts
new workers, whose generators start afresh: the resumed epochs would augment differently than the
uninterrupted run did. `EpochSampler` avoids that. Its order for epoch ``e`` is a function of
``(seed, e)``, and each index it yields is a `SeededIndex` carrying a seed that is a function of
``(seed, e, index)``. The folder datasets run their transform inside `sample_randomness`, which seeds
torch's CPU generator, Python's ``random`` and NumPy's global generator from that seed. So a sample's
augmentation depends on the seed, the epoch and the index only: not on the worker that loads it, the
number of workers, nor whether the run was interrupted. In the main process (``num_workers=0``) the
generators are restored after each sample, so loading draws nothing from the training process's own
random state.

Each pass over the sampler is the next epoch. Its count is all the state there is: the Trainer's
checkpoint saves it (``sampler.state_dict()``) and a resumed run restores it, so the resumed epochs get
the orders and seeds the uninterrupted run's epochs got. A second ``fit`` on the same loader goes on
counting, so it sees new orders and new augmentation.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler, get_worker_info

__all__ = ["EpochSampler", "SeededIndex", "derive_seed", "sample_randomness"]


def derive_seed(*values: int) -> int:
    """A 64-bit seed from integers, well mixed: neighbouring inputs give unrelated seeds.

    Examples:
        >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 1, 3)
        True
        >>> 0 <= derive_seed(-1, 10**30) < 2**64
        True
    """
    digest = hashlib.blake2b(repr(tuple(int(v) for v in values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SeededIndex(int):
    """A dataset index (an ``int``) that carries the seed of its sample's random augmentation.

    Examples:
        >>> index = SeededIndex(3, seed=12345)
        >>> index + 1, index.seed, [10, 20, 30, 40][index]
        (4, 12345, 40)
    """

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # to worker processes: the index and its seed
        return (SeededIndex, (int(self), self.seed))

    def __repr__(self) -> str:
        return f"SeededIndex({int(self)}, seed={self.seed})"


class EpochSampler(Sampler[int]):
    """Yields ``0..n-1`` (shuffled per epoch when ``shuffle``) as `SeededIndex` values.

    Epoch ``e``'s order depends on ``(seed, e)`` only, the seed of index ``i`` on ``(seed, e, i)`` only.
    A shard (`shard`, what the Trainer makes under torchrun) yields every ``world_size``-th index of that
    order, with the same seeds.

    Args:
        num_samples: n, the dataset's length.
        seed: Seed of the orders and of the per-sample seeds.
        shuffle: Shuffle each epoch (else the order is ``0..n-1``, with fresh seeds every epoch).

    Raises:
        ValueError: ``num_samples`` is negative.

    Examples:
        >>> sampler = EpochSampler(5, seed=0)
        >>> first, second = list(sampler), list(sampler)  # by hand, each pass is the next epoch
        >>> sorted(first) == [0, 1, 2, 3, 4] and first != second
        True
        >>> sampler.state_dict()  # what a checkpoint keeps
        {'epoch': 2}
        >>> sampler.set_epoch(0)  # the first epoch again: the same order and seeds
        >>> [(int(i), i.seed) for i in sampler] == [(int(i), i.seed) for i in first]
        True
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples is a dataset length >= 0, got {num_samples}")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), bool(shuffle)
        self.epoch, self.rank, self.world_size, self.drop_last = 0, 0, 1, False

    def shard(self, rank: int, world_size: int, drop_last: bool = False) -> EpochSampler:
        """The part of every epoch that process ``rank`` of ``world_size`` loads, as `DistributedSampler`
        splits it: the order is padded by repeating its start (or cut, with ``drop_last``) to a multiple
        of ``world_size``, and each rank takes every ``world_size``-th index from its own position.

        Raises:
            ValueError: ``rank`` is not in ``[0, world_size)``.

        Examples:
            >>> full = list(EpochSampler(5, seed=0))
            >>> parts = [list(EpochSampler(5, seed=0).shard(r, 2)) for r in range(2)]
            >>> parts[0] + parts[1] == full[0::2] + full[1::2] + full[:1]
            True
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank is in [0, world_size={world_size}), got {rank}")
        part = EpochSampler(self.num_samples, self.seed, self.shuffle)
        part.epoch, part.rank, part.world_size, part.drop_last = self.epoch, rank, world_size, drop_last
        return part

    def set_epoch(self, epoch: int) -> None:
        """Makes the next pass epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": the next pass's epoch}``, what a checkpoint keeps."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continues from what `state_dict` returned."""
        self.set_epoch(state["epoch"])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch) % 2**63)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.world_size > 1:
            total = len(self) * self.world_size
            order = (order * (total // max(len(order), 1) + 1))[:total]
            order = order[self.rank :: self.world_size]
        base = derive_seed(self.seed, epoch, -1)
        return (SeededIndex(i, derive_seed(base, i)) for i in order)

    def __repr__(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return f"{type(self).__name__}({self.num_samples}, seed={self.seed}, shuffle={self.shuffle}{shard})"


def _seed_generators(seed: int) -> None:
    torch.default_generator.manual_seed(seed % 2**63)
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])


@contextlib.contextmanager
def sample_randomness(index: Any) -> Iterator[None]:
    """Runs the block with the random generators seeded from ``index.seed``, when ``index`` has one.

    In a worker process the generators are simply seeded (the worker draws for nothing else than its
    samples, and the ``collate_fn`` that follows them); in the main process they are restored afterwards.
    A plain ``int`` index leaves the generators alone, as before.

    Examples:
        >>> with sample_randomness(SeededIndex(0, seed=7)):
        ...     a = torch.rand(2)
        >>> with sample_randomness(SeededIndex(5, seed=7)):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    seed = getattr(index, "seed", None)
    if seed is None:
        yield
        return
    if get_worker_info() is not None:
        _seed_generators(seed)
        yield
        return
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    _seed_generators(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])
