"""Where training runs: the device, the autocast precision, and the processes of a torchrun launch.

Under ``torchrun`` every process trains a `DistributedDataParallel` copy of the model (gloo on the CPU,
nccl on CUDA) on its shard of each loader; only rank 0 logs and writes.
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from ..data.sampling import EpochSampler

__all__ = [
    "PRECISIONS",
    "available_devices",
    "init_distributed",
    "join_processes",
    "resolve_device",
    "resolve_precision",
    "shard_loader",
    "wrap",
]

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_LOADER_ARGS: tuple[str, ...] = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
)
_LOADER_ARGS += ("worker_init_fn", "generator", "prefetch_factor", "persistent_workers")


def available_devices() -> list[str]:
    """The devices this machine can train on, e.g. ``['cuda:0', 'cpu']``."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return [*cuda, *(["mps"] if torch.backends.mps.is_available() else []), "cpu"]


def resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    """``"auto"``: CUDA (this process's GPU under torchrun), then MPS, then the CPU.

    Raises:
        ValueError: Not a device name, or a device this machine lacks (the message names those it has).
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    missing = {
        "cuda": not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count(),
        "mps": not torch.backends.mps.is_available(),
    }.get(resolved.type, False)
    if missing:
        if resolved.type == "mps":
            reason = "MPS needs an Apple GPU and a PyTorch built for it"
        elif torch.cuda.is_available():
            reason = f"it has {torch.cuda.device_count()} GPU(s), numbered from 0"
        else:
            reason = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(
            f"device {str(device)!r} is not available here ({reason}); this machine has "
            f"{', '.join(available_devices())}. Pass device='auto' (--device auto) to use the best of them."
        )
    return resolved


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (nccl on CUDA, gloo otherwise) if needed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_processes(device: str | torch.device, cache_features: bool) -> tuple[torch.device, int, int]:
    """``(device, rank, world size)`` of this process (`resolve_device`, `init_distributed`).

    Raises:
        NotImplementedError: ``cache_features=True`` under torchrun (several processes).
    """
    resolved = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    rank, world_size = init_distributed(resolved)
    if cache_features and world_size > 1:
        raise NotImplementedError(
            "cache_features=True is not supported under torchrun (DistributedDataParallel) yet; "
            "use cache_features=False when training on several processes"
        )
    return resolved, rank, world_size


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA when supported, else fp16 (with a grad scaler); fp32 elsewhere."""
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def wrap(model: nn.Module, device: torch.device, world_size: int, compile: bool) -> nn.Module:
    """The module that runs training forwards: ``model``, DDP-wrapped under torchrun, maybe compiled.

    DDP registers only the parameters that require grad when it is built and ignores the rest, so a
    block unfrozen later (``gradual``) would never have its gradients all-reduced and the ranks would
    drift apart. ``find_unused_parameters`` cannot fix that (it only covers registered parameters) and
    costs a graph walk every step. The Trainer calls this again whenever the trainable set changes (a
    few times per run; each rebuild broadcasts rank 0's weights), which keeps frozen blocks out of the
    gradient buckets entirely.
    """
    net = model
    if world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return cast(nn.Module, torch.compile(net)) if compile else net


def shard_loader(loader: Any, *, rank: int, world_size: int, seed: int, train: bool) -> Any:
    """Under DDP, a copy of a DataLoader that gives each rank its share of the samples.

    Training uses a DistributedSampler, or the rank's shard of an `EpochSampler` (equal batch counts, as
    the gradient all-reduce needs);
    evaluation gives every sample to exactly one rank, so reduced metrics count each sample once.
    """
    if (
        world_size == 1
        or not isinstance(loader, DataLoader)
        or isinstance(loader.dataset, IterableDataset)
        or isinstance(loader.sampler, DistributedSampler)
    ):
        return loader
    if loader.batch_size is None:
        raise ValueError(
            "under torchrun the Trainer shards loaders itself; build the DataLoader with "
            "batch_size= (not batch_sampler=) or give it a DistributedSampler"
        )
    dataset = loader.dataset
    if train and isinstance(loader.sampler, EpochSampler):  # keeps each sample's augmentation seed
        sampler: Any = loader.sampler.shard(rank, world_size, drop_last=loader.drop_last)
    elif train:
        shuffle = isinstance(loader.sampler, RandomSampler)
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=loader.drop_last)
    else:
        sampler = range(rank, len(dataset), world_size)  # type: ignore[arg-type]
    return DataLoader(dataset, sampler=sampler, **{k: getattr(loader, k) for k in _LOADER_ARGS})
