"""Trainer: fit, evaluate and predict a TransferModel with one plain loop.

The loop is the hand-written ``train_model`` of the transfer-learning tutorials, plus what they get wrong:
the freeze schedule applied every epoch on an optimizer built once, AMP without branches, atomic and
exactly resumable checkpoints, DDP that follows the trainable set, and clear errors on bad data.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler
from tqdm.auto import tqdm

from .cache import DEFAULT_CACHE_BUDGET, CachedBatch, FeatureCache, check_cacheable
from .metrics import ClassificationMeter, SegmentationMeter

if TYPE_CHECKING:
    from .model import TransferModel

__all__ = ["Trainer"]

IGNORE_INDEX = 255
_LOADER_ARGS = ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "timeout")
_LOADER_ARGS += ("worker_init_fn", "generator", "prefetch_factor", "persistent_workers")
EVENTS = ("on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end")
SCHEDULERS = ("cosine", "step", "onecycle", "none")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SYNC_EVERY = 50  # training steps between host syncs (running loss, non-finite check)


def _segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Cross-entropy averaged over labelled pixels (``255`` = ignore); 0, not NaN, when none is labelled."""
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (masks != IGNORE_INDEX).sum().clamp(min=1)


class Trainer:
    """Fits a `TransferModel`: losses and metrics follow ``model.task``; one dict of results per epoch.

    Args:
        model: The model; its freeze policy (``model.freeze``) decides what trains, epoch by epoch.
        epochs: Number of epochs.
        lr: Learning rate of the head; ``layer_decay`` and ``backbone_lr_mult`` scale it per block.
        optimizer: ``"adamw"``, ``"adam"``, ``"sgd"`` (momentum 0.9) or ``callable(param_groups)``.
        weight_decay: Weight decay (norm and bias parameters get none).
        scheduler: ``"cosine"``, ``"step"`` (x0.1 at 1/3 and 2/3 of training), ``"onecycle"``, ``"none"``
            or ``callable(optimizer, total_steps)`` returning a scheduler; all step once per optimizer step.
        layer_decay: Learning-rate factor per block from the head towards the stem (e.g. 0.75).
        loss: ``callable(logits, targets) -> scalar``; default cross-entropy (``255`` = ignore for masks).
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device.
        precision: ``"auto"`` (bf16 on CUDA if supported, else fp16 with a grad scaler; fp32 elsewhere),
            ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        grad_accum: Batches per optimizer step.
        clip_grad_norm: Maximum gradient norm, or None.
        cache_features: Compute the frozen prefix's outputs (the whole backbone under ``freeze("all")``,
            the blocks before the trainable ones under ``last_n`` / ``gradual``) once per sample and
            train only the rest; validation batches are cached too. Needs deterministic loaders
            (DataLoaders over map-style datasets without random transforms: a ValueError names any
            random torchvision transform found) and frozen norm layers (``bn="frozen"``). Training
            matches an uncached run up to floating-point noise, batch order and dropout masks included.
            When ``gradual`` unfreezes blocks the cache is rebuilt at the new boundary, and dropped once
            nothing is frozen. Not supported under torchrun (DDP). See `transferkit.cache`.
        cache_budget: Bytes of host memory the cached features may take (per loader); the rest is kept
            in files under a temporary directory that is deleted when ``fit`` ends.
        cache_dir: Where that temporary directory goes (default: the system's temp directory).
        checkpoint_dir: Directory for ``last.pt``, written atomically after every epoch (rank 0 only).
        resume: Continue from ``checkpoint_dir/last.pt`` when it exists.
        early_stopping: Patience: stop after this many epochs without improvement of ``monitor``.
        monitor: History key to track, ``"val_loss"`` by default (``"train_loss"`` without validation);
            keys ending in ``loss`` are minimised, others (``val_acc``, ``val_miou``) maximised.
        restore_best: With validation, end with the weights of the best epoch.
        progress: Show a tqdm bar per epoch; False prints nothing.
        callbacks: Objects with any of the methods ``on_fit_start``, ``on_epoch_start``,
            ``on_batch_end``, ``on_epoch_end``, ``on_fit_end``, each called with the trainer (on every
            rank; check ``trainer.is_main``). Setting ``trainer.should_stop = True`` ends fit after the epoch.
        seed: Seeds torch, random and numpy (plus the rank) at the start of ``fit``, and the sampler.
        backbone_lr_mult: Extra learning-rate factor for the whole backbone.
        compile: Train through ``torch.compile(model)``.

    Examples:
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)  # logits [N, 2]
        >>> model.freeze(policy="gradual", n=0, step=1)
        >>> history = Trainer(model, epochs=3, progress=False).fit({"train": train, "val": val})
        >>> [row["trainable_blocks"] for row in history], sorted(history[-1])
        ([0, 1, 2], ['epoch', 'lr', 'seconds', 'train_loss', 'trainable_blocks', 'val_acc', 'val_loss'])
    """

    def __init__(
        self,
        model: TransferModel,
        *,
        epochs: int = 10,
        lr: float = 1e-3,
        optimizer: str | Callable[[list[dict[str, Any]]], torch.optim.Optimizer] = "adamw",
        weight_decay: float = 0.01,
        scheduler: str | Callable[[torch.optim.Optimizer, int], Any] = "cosine",
        layer_decay: float | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        cache_features: bool = False,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        early_stopping: int | None = None,
        monitor: str | None = None,
        restore_best: bool = True,
        progress: bool = True,
        callbacks: Sequence[object] | None = None,
        seed: int | None = None,
        backbone_lr_mult: float = 1.0,
        compile: bool = False,
        cache_budget: int = DEFAULT_CACHE_BUDGET,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if cache_budget < 0:
            raise ValueError(f"cache_budget must be >= 0 bytes, got {cache_budget}")
        if epochs < 1 or grad_accum < 1 or (early_stopping is not None and early_stopping < 1):
            raise ValueError(
                f"epochs, grad_accum and early_stopping must be >= 1, got {epochs}, "
                f"{grad_accum}, {early_stopping}"
            )
        if not callable(scheduler) and scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; use one of {SCHEDULERS} or a callable")
        if precision != "auto" and precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use 'auto' or one of {tuple(PRECISIONS)}")
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir= (the directory holding last.pt)")
        for cb in callbacks or ():
            if not any(hasattr(cb, event) for event in EVENTS):
                raise TypeError(f"callback {cb!r} has none of the methods {EVENTS}")
        self.model, self.epochs, self.grad_accum = model, epochs, grad_accum
        self.clip_grad_norm, self.scheduler_spec = clip_grad_norm, scheduler
        self.cache_features, self.resume, self.early_stopping = cache_features, resume, early_stopping
        self.monitor, self.restore_best, self.callbacks = monitor, restore_best, list(callbacks or ())
        self.seed, self.compile = seed, compile
        self.cache_budget, self.cache_dir = cache_budget, cache_dir
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.loss_fn = loss or (_segmentation_loss if model.task == "segmentation" else F.cross_entropy)

        self.device = _resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self.rank, self.world_size = _init_distributed(self.device)
        self.is_main = self.rank == 0
        if cache_features and self.world_size > 1:
            raise NotImplementedError(
                "cache_features=True is not supported under torchrun (DistributedDataParallel) yet; "
                "use cache_features=False when training on several processes"
            )
        self.show_progress = progress and self.is_main
        self.amp_dtype = _resolve_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        model.to(self.device, memory_format=self.memory_format)

        groups = model.param_groups(
            lr, layer_decay=layer_decay, backbone_lr_mult=backbone_lr_mult, weight_decay=weight_decay
        )
        partly_frozen = len(model.trainable_blocks) < len(model.blocks)
        self.optimizer = _build_optimizer(optimizer, groups, fused_on_cpu=partly_frozen)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler: Any = None
        self.history: list[dict[str, Any]] = []
        self.epoch = self.step = 0
        self.loss: Tensor | None = None  # last training loss, on the device (read it without a sync)
        self.should_stop = False
        self._net: nn.Module = model
        self._net_trainable: tuple[str, ...] | None = None
        self._best: dict[str, Any] = {}
        self._keep_best = False
        self._caches: dict[str, FeatureCache] = {}  # "train" / "val" -> the cache at the current boundary
        self._splits: dict[int, tuple[nn.Module, nn.Module]] = {}  # boundary -> backbone.split result
        self._cached_net: nn.Module | None = None  # the part after the cached prefix (maybe compiled)

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, loaders: Any) -> list[dict[str, Any]]:
        """Trains for ``epochs`` epochs and returns the history (one dict per epoch).

        Args:
            loaders: ``{"train": loader, "val": loader}``, a ``(train, val)`` tuple or a train loader;
                batches are ``(inputs [N, C, H, W], targets)`` with targets ``[N]`` or masks ``[N, H, W]``.

        Returns:
            The history: per epoch ``epoch``, ``train_loss`` (mean batch loss), ``lr`` (the head's, at the
            epoch's start), ``trainable_blocks`` (count), ``seconds``, and with validation ``val_loss``
            plus ``val_acc`` (and ``val_top5`` above 5 classes) or ``val_miou`` and ``val_acc``.

        Raises:
            ValueError: An empty loader, targets outside ``[0, num_classes)`` (the model keeps the weights
                of the last complete epoch), or an unknown ``monitor``.
            FloatingPointError: A non-finite loss; the model keeps the weights of the last good epoch.
        """
        train, val = _split_loaders(loaders)
        for name, loader in (("train", train), ("val", val)):
            if loader is not None:
                _check_length(loader, name)
        if self.seed is not None:
            _seed_everything(self.seed + self.rank)
        train, val = self._shard(train, train=True), self._shard(val, train=False)
        monitor = self.monitor or ("val_loss" if val is not None else "train_loss")
        if monitor.startswith("val_") and val is None:
            raise ValueError(
                f"monitor={monitor!r} needs a validation loader; pass {{'train': ..., 'val': ...}}"
            )
        mode_min = monitor.endswith("loss")
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr
        self.scheduler = _build_scheduler(
            self.scheduler_spec,
            self.optimizer,
            self.base_lrs,
            self.epochs * math.ceil(len(train) / self.grad_accum),
        )
        self.history, self._best, self.should_stop = [], {}, False
        self._keep_best = val is not None and self.restore_best
        start = self._load_checkpoint(train) if self.resume else 0
        if self.cache_features:
            self._check_cache(train, start)
        try:
            self._run_epochs(train, val, start, monitor, mode_min)
        finally:
            self._close_caches()
        if self._best.get("state") is not None:
            self.model.load_state_dict(self._best["state"])
        return self.history

    def _run_epochs(self, train: Any, val: Any, start: int, monitor: str, mode_min: bool) -> None:
        self._emit("on_fit_start")
        for epoch in range(start, self.epochs):
            if self.should_stop or self._out_of_patience(epoch):
                break
            self.epoch, started = epoch, time.perf_counter()
            self.model.apply_schedule(epoch)
            net = self._network()
            if isinstance(getattr(train, "sampler", None), DistributedSampler):
                train.sampler.set_epoch(epoch)
            self._emit("on_epoch_start")
            row = {
                "epoch": epoch,
                "lr": max(g["lr"] for g in self.optimizer.param_groups),
                "trainable_blocks": len(self.model.trainable_blocks),
            }
            batches = self._cached_epoch(train, "train")
            desc = f"epoch {epoch + 1}/{self.epochs}"
            with (
                self._rollback_point() as last_good,
                tqdm(total=len(train), desc=desc, disable=not self.show_progress) as bar,
            ):
                try:
                    row["train_loss"] = self._train_epoch(net, batches, bar)
                except (ValueError, FloatingPointError):
                    last_good.seek(0)  # bad data or divergence: keep the last good epoch
                    state = torch.load(last_good, map_location=self.device, weights_only=True)
                    self.model.load_state_dict(state, strict=False)
                    raise
                if val is not None:
                    metrics = self._evaluate(self._cached_epoch(val, "val"))
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                row["seconds"] = time.perf_counter() - started
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith(("train_", "val_"))})
            self.history.append(row)
            self._track_best(row, monitor, mode_min)
            if self.checkpoint_dir is not None and self.is_main:
                self._save_checkpoint(train)
            self._emit("on_epoch_end")
        self._emit("on_fit_end")

    def _train_epoch(self, net: nn.Module, loader: Iterable[Any], bar: Any) -> float:
        """One pass over ``loader``; returns the mean batch loss (over all ranks)."""
        self.model.train()
        n, pending, loss_total = len(loader), [], 0.0  # type: ignore[arg-type]
        for step, (inputs, targets) in enumerate(loader):
            self.step = step
            if not isinstance(inputs, CachedBatch):  # cached targets were checked when cached
                self._check_targets(targets, f"epoch {self.epoch}, step {step}")
            inputs, targets = self._to_device(inputs, targets)
            window_start = step - step % self.grad_accum
            window = min(self.grad_accum, n - window_start)  # the epoch's last window may be short
            steps_now = step + 1 == window_start + window
            accumulate = net.no_sync() if self.world_size > 1 and not steps_now else contextlib.nullcontext()
            with accumulate:
                with self._autocast():
                    loss = self.loss_fn(self._forward(net, inputs), targets)
                self.scaler.scale(loss / window).backward()
            if steps_now:
                self._optimizer_step()
            self.loss = loss.detach()
            pending.append(self.loss)
            bar.update()
            if len(pending) == _SYNC_EVERY or step + 1 == n:
                loss_total += self._sync_losses(pending, first_step=step + 1 - len(pending))
                bar.set_postfix(loss=f"{loss_total / (step + 1):.4f}")
                pending = []
            self._emit("on_batch_end")
        if self.world_size > 1:
            # DDP broadcasts rank 0's buffers before each forward, so after the last step every rank holds
            # its own batch statistics; share rank 0's so that validation and the final weights agree.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
        return loss_total / n

    def _forward(self, net: nn.Module, inputs: Tensor | CachedBatch) -> Tensor:
        """Logits for a batch. The one place the frozen prefix runs, so cached features can replace it.

        Frozen parameters have ``requires_grad=False`` and inputs never require grad, so autograd records
        nothing until the first trainable block: the frozen prefix already runs without a graph (and
        saves no activations for backward), exactly as under ``torch.no_grad()``.
        """
        if isinstance(inputs, CachedBatch):
            return self._cached_net(*inputs.state, input_size=inputs.input_size)
        return net(inputs)

    # ------------------------------------------------------------------------------ feature cache
    def _boundary(self) -> int:
        """Index of the first trainable block: the frozen prefix is the blocks before it."""
        return len(self.model.blocks) - len(self.model.trainable_blocks)

    def _check_cache(self, train: Any, start: int) -> None:
        """Fail before training when caching cannot work: bad loader, norm layers, unsplittable backbone."""
        freeze = self.model.freeze_state()
        if freeze.get("bn", "frozen") != "frozen":
            raise ValueError(
                "cache_features=True needs the frozen blocks' norm layers in eval mode, but the model was "
                "frozen with bn='train' (their statistics change every batch); freeze with bn='frozen' "
                "or use cache_features=False"
            )
        check_cacheable(train, "train")
        boundaries = {self._boundary()}
        if freeze.get("policy") == "gradual":  # every boundary the schedule will reach
            try:
                for epoch in range(start, self.epochs):
                    self.model.apply_schedule(epoch)
                    boundaries.add(self._boundary())
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

    def _cached_epoch(self, loader: Any, role: str) -> Any:
        """``loader``, or this epoch's batches from the feature cache (rebuilt when the boundary moved)."""
        if not self.cache_features:
            return loader
        k = self._boundary()
        cache = self._caches.get(role)
        if cache is not None and cache.boundary != k:
            cache.close()  # the frozen prefix changed: its cached outputs are stale
            del self._caches[role]
            cache = None
        if k == 0:
            return loader  # nothing is frozen: nothing to cache
        if cache is None:
            if role != "train":
                try:
                    check_cacheable(loader, role)
                except (TypeError, ValueError):
                    return loader  # caching validation is an optimisation only
            cache = FeatureCache(
                self.model,
                k,
                loader,
                device=self.device,
                memory_format=self.memory_format,
                autocast=self._autocast,
                budget=self.cache_budget,
                directory=self.cache_dir,
                split=self._split(k) if k < len(self.model.blocks) else None,
                check_targets=self._check_targets,
                progress=self.show_progress,
            )
            self._caches[role] = cache
            if role == "train" or self._cached_net is None:
                self._cached_net = torch.compile(cache.trainable) if self.compile else cache.trainable
        return cache.epoch()

    def _close_caches(self) -> None:
        for cache in self._caches.values():
            cache.close()
        self._caches, self._splits, self._cached_net = {}, {}, None

    @contextlib.contextmanager
    def _rollback_point(self) -> Iterator[Any]:
        """An anonymous temporary file holding the state this epoch can change (`_mutable_state`).

        A failed epoch rolls back to it. It lives in a file, not in memory, so training holds no second
        copy of the trainable weights (for a resnet18 that is 45 MB of peak memory, more than all the
        activations of a frozen backbone's forward); writing it costs a few milliseconds per epoch.
        """
        with tempfile.TemporaryFile(prefix="transferkit-rollback-", dir=self.cache_dir) as f:
            torch.save(self._mutable_state(), f)
            yield f

    def _mutable_state(self) -> dict[str, Tensor]:
        """The state an epoch can change: trainable parameters and the buffers of modules in training mode.

        Frozen blocks never change (their norm layers stay in eval mode), so under ``freeze("all")`` this
        is the neck and head only, not the whole model. The tensors are the model's own (not copies).
        """
        self.model.train()
        keys = {name for name, p in self.model.named_parameters() if p.requires_grad}
        for prefix, module in self.model.named_modules():
            if module.training:
                skip = getattr(module, "_non_persistent_buffers_set", set())
                keys.update(f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False))
                keys.difference_update(f"{prefix}.{b}" if prefix else b for b in skip)
        return {k: v for k, v in self.model.state_dict().items() if k in keys}

    def _optimizer_step(self) -> None:
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grads = [p for p in self.model.parameters() if p.grad is not None]
            nn.utils.clip_grad_norm_(grads, self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)  # frozen params keep grad None: AdamW skips them
        self.scheduler.step()

    def _sync_losses(self, pending: list[Tensor], first_step: int) -> float:
        """The bounded-rate host sync: the sum of the pending losses (mean over ranks), checked finite."""
        losses = torch.stack(pending).float()
        if self.world_size > 1:
            dist.all_reduce(losses)  # a NaN on any rank shows on every rank: all raise together
            losses /= self.world_size
        bad = (~losses.isfinite()).nonzero()
        if len(bad):
            raise FloatingPointError(
                f"non-finite loss at epoch {self.epoch}, step {first_step + int(bad[0])}; the model keeps "
                "the weights of the last good epoch. Lower lr, set clip_grad_norm, or check the inputs."
            )
        return losses.sum().item()

    # ------------------------------------------------------------------------------ evaluate, predict
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Loss and metrics over ``loader`` (all ranks under DDP): ``{"loss", "acc", ...}``.

        Classification reports ``acc`` (and ``top5`` with more than 5 classes); segmentation ``miou`` and
        pixel ``acc``. The loss is averaged over samples.

        Examples:
            >>> trainer.evaluate(val_loader)
            {'loss': 0.31, 'acc': 0.9}
        """
        _check_length(loader, "evaluation")
        return self._evaluate(self._shard(loader, train=False))

    @torch.no_grad()
    def _evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        seg = self.model.task == "segmentation"
        meter = (SegmentationMeter if seg else ClassificationMeter)(
            self.model.num_classes, device=self.device
        )
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        sums = torch.zeros(2, device=self.device, dtype=dtype)  # [loss * samples, samples]
        ones = torch.ones((), device=self.device, dtype=dtype)
        was_training = self.model.training
        self.model.eval()
        for step, (inputs, targets) in enumerate(_progress(loader, "eval", not self.show_progress)):
            if not isinstance(inputs, CachedBatch):
                self._check_targets(targets, f"evaluation batch {step}")
            inputs, targets = self._to_device(inputs, targets)
            with self._autocast():
                logits = self._forward(self.model, inputs)
                loss = self.loss_fn(logits, targets)
            sums += torch.stack([loss.to(dtype), ones]) * len(targets)
            meter.update(logits.float(), targets)
        self.model.train(was_training)
        counts = meter.confmat if seg else meter.counts
        if self.world_size > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        loss_sum, samples = sums.tolist()
        return {"loss": loss_sum / samples, **meter.compute()}

    @torch.no_grad()
    def predict(self, loader: Iterable[Any]) -> Tensor:
        """Logits for every batch of ``loader``, concatenated in loader order, on the CPU in float32.

        Batches may be inputs alone or ``(inputs, targets)``. Each rank predicts the whole loader.

        Examples:
            >>> trainer.predict(test_loader).shape  # 10 images, 2 classes
            torch.Size([10, 2])
        """
        was_training = self.model.training
        self.model.eval()
        outputs = []
        for batch in _progress(loader, "predict", not self.show_progress):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            inputs = inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)
            with self._autocast():
                outputs.append(self._forward(self.model, inputs).float().cpu())
        self.model.train(was_training)
        if not outputs:
            raise ValueError("predict() got an empty loader; pass a loader with at least one batch")
        return torch.cat(outputs)

    # ---------------------------------------------------------------------------------------- helpers
    def _autocast(self) -> torch.autocast:
        return torch.amp.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32
        )

    def _to_device(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        inputs = inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        return inputs, targets if targets.is_floating_point() else targets.long()

    def _check_targets(self, targets: Tensor, where: str) -> None:
        """Class indices outside ``[0, num_classes)`` (255 allowed in masks) raise before the step.

        Targets come from the loader on the CPU, so the check costs no device sync.
        """
        if targets.is_floating_point():
            return  # soft targets for a custom loss
        k = self.model.num_classes
        bad = (targets < 0) | (targets >= k)
        if self.model.task == "segmentation":
            bad &= targets != IGNORE_INDEX
        if bad.any():
            allowed = f"[0, {k})" + (" or 255 (ignore)" if self.model.task == "segmentation" else "")
            raise ValueError(
                f"target value {int(targets[bad][0])} at {where} is outside {allowed} for num_classes={k}; "
                "fix the labels or build the model with the right num_classes."
            )

    def _network(self) -> nn.Module:
        """The module that runs training forwards: the model, DDP-wrapped under torchrun, maybe compiled.

        DDP registers only the parameters that require grad when it is built and ignores the rest, so a
        block unfrozen later (``gradual``) would never have its gradients all-reduced and the ranks would
        drift apart. ``find_unused_parameters`` cannot fix that (it only covers registered parameters) and
        costs a graph walk every step. We rebuild the wrapper whenever the trainable set changes (a few
        times per run; each rebuild broadcasts rank 0's weights), which keeps frozen blocks out of the
        gradient buckets entirely.
        """
        trainable = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        if trainable != self._net_trainable:
            net: nn.Module = self.model
            if self.world_size > 1:
                self._net = self.model  # drop the old wrapper (and its autograd hooks) first
                ids = [self.device] if self.device.type == "cuda" else None
                net = DistributedDataParallel(self.model, device_ids=ids)
            self._net = torch.compile(net) if self.compile else net
            self._net_trainable = trainable
        return self._net

    def _shard(self, loader: Any, train: bool) -> Any:
        """Under DDP, a copy of a DataLoader that gives each rank its share of the samples.

        Training uses a DistributedSampler (equal batch counts, as the gradient all-reduce needs);
        evaluation gives every sample to exactly one rank, so reduced metrics count each sample once.
        """
        if (
            self.world_size == 1
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
        if train:
            shuffle = isinstance(loader.sampler, RandomSampler)
            sampler: Any = DistributedSampler(
                dataset, shuffle=shuffle, seed=self.seed or 0, drop_last=loader.drop_last
            )
        else:
            sampler = range(self.rank, len(dataset), self.world_size)  # type: ignore[arg-type]
        return DataLoader(dataset, sampler=sampler, **{k: getattr(loader, k) for k in _LOADER_ARGS})

    def _track_best(self, row: dict[str, Any], monitor: str, mode_min: bool) -> None:
        if monitor not in row:
            raise ValueError(f"monitor={monitor!r} is not in the history; choose one of {sorted(row)}")
        score, best = row[monitor], self._best.get("score")
        if best is None or (score < best if mode_min else score > best):
            state = _cpu_copy(self.model.state_dict()) if self._keep_best else None
            self._best = {"score": score, "epoch": row["epoch"], "state": state}

    def _out_of_patience(self, epoch: int) -> bool:
        """Whether ``early_stopping`` epochs have passed without improvement before ``epoch``."""
        patience = self.early_stopping
        return patience is not None and bool(self._best) and epoch - 1 - self._best["epoch"] >= patience

    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            handler = getattr(cb, event, None)
            if handler is not None:
                handler(self)

    # ------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, train_loader: Any) -> None:
        best = dict(self._best)
        if best.get("epoch") == self.epoch:
            best["state"] = None  # the best weights are the model's own: do not store them twice
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "freeze": self.model.freeze_state(),
            "history": self.history,
            "best": best,
            "rng": _rng_state(train_loader),
        }
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        _atomic_save(state, self.checkpoint_dir / "last.pt")  # type: ignore[operator]

    def _load_checkpoint(self, train_loader: Any) -> int:
        """Restores everything from ``last.pt`` and returns the epoch to start at (0 without one)."""
        path = self.checkpoint_dir / "last.pt"  # type: ignore[operator]
        if not path.exists():
            return 0
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_freeze_state(ckpt["freeze"])
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.history, self._best = ckpt["history"], ckpt["best"]
        if not self._keep_best:
            self._best["state"] = None
        elif self._best["epoch"] == ckpt["epoch"]:  # saved without a copy: the best are the model's weights
            self._best["state"] = _cpu_copy(self.model.state_dict())
        _set_rng_state(ckpt["rng"], train_loader)
        return ckpt["epoch"] + 1


# -------------------------------------------------------------------------------------------- functions
def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    device = torch.device(device)
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (nccl on CUDA, gloo otherwise) if needed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _build_optimizer(spec: Any, groups: list[dict[str, Any]], fused_on_cpu: bool) -> torch.optim.Optimizer:
    if callable(spec):
        return spec(groups)
    # On CUDA the fused kernels update all tensors of a group in one launch. On the CPU they make the step
    # itself 2-3x faster, but the per-parameter loop's temporary buffers keep the allocator's large blocks
    # in use between steps; without them, the activations and gradients of a network training end to end
    # land on fresh pages every step. Measured on 2 cores with resnet18: fine-tuning everything, the fused
    # step gave 40-60 % more page faults and 5-9 % longer epochs; with a frozen prefix (last_n, cached
    # features) the fused step is the faster one. So the CPU gets them only when part of the net is frozen.
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    usable = bool(params) and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    fused = True if usable and (devices == {"cuda"} or fused_on_cpu) else None  # None: torch's default
    factories = {
        "adamw": lambda g: torch.optim.AdamW(g, fused=fused),
        "adam": lambda g: torch.optim.Adam(g, fused=fused),
        "sgd": lambda g: torch.optim.SGD(g, momentum=0.9, fused=fused),
    }
    if spec not in factories:
        raise ValueError(f"unknown optimizer {spec!r}; use one of {sorted(factories)} or a callable")
    return factories[spec](groups)


def _build_scheduler(spec: Any, optimizer: torch.optim.Optimizer, base_lrs: list[float], total: int) -> Any:
    if callable(spec):
        return spec(optimizer, total)
    if spec == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=base_lrs, total_steps=total)
    factors = {
        "cosine": lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
        "step": lambda s: 0.1 ** min(2, 3 * s // total),
        "none": lambda s: 1.0,
    }
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[spec])


def _progress(iterable: Iterable[Any], desc: str, disable: bool) -> Iterator[Any]:
    """Yields from ``iterable`` while a transient tqdm bar counts the items.

    Not ``tqdm(iterable)``: tqdm.auto's class calls ``iter(iterable)`` in its constructor and then iterates
    afresh, so a DataLoader would build a second iterator, spawning its workers twice and drawing one
    more number from the global RNG.
    """
    total = len(iterable) if hasattr(iterable, "__len__") else None
    with tqdm(total=total, desc=desc, leave=False, disable=disable) as bar:
        for item in iterable:
            yield item
            bar.update()


def _split_loaders(loaders: Any) -> tuple[Any, Any]:
    if isinstance(loaders, dict):
        if "train" not in loaders or set(loaders) - {"train", "val"}:
            raise ValueError(
                f"fit() takes {{'train': ..., 'val': ...}} ('val' optional), got keys {sorted(loaders)}"
            )
        return loaders["train"], loaders.get("val")
    if isinstance(loaders, tuple):
        if len(loaders) != 2:
            raise ValueError(f"fit() takes a (train, val) tuple, got {len(loaders)} items")
        return loaders
    return loaders, None


def _check_length(loader: Any, name: str) -> None:
    try:
        n = len(loader)
    except TypeError:
        raise TypeError(f"the {name} loader has no len(); give its dataset a __len__") from None
    if n == 0:
        raise ValueError(
            f"the {name} loader is empty (0 batches); check the dataset, or lower batch_size "
            "if drop_last=True"
        )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The generators that shuffle ``loader`` and seed its workers, each once."""
    found = [getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)]
    unique = {id(g): g for g in found if isinstance(g, torch.Generator)}
    return list(unique.values())


def _rng_state(loader: Any) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict[str, Any], loader: Any) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    for generator, saved in zip(_loader_generators(loader), state["loader"], strict=False):
        generator.set_state(saved)


def _atomic_save(obj: Any, path: Path) -> None:
    """Writes ``obj`` to a temp file, fsyncs, renames it over ``path``: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
