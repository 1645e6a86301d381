"""Trainer: fit, evaluate and predict a TransferModel with one plain loop.

The loop is the hand-written ``train_model`` of the transfer-learning tutorials, plus what they get wrong:
the freeze schedule applied every epoch on an optimizer built once, AMP without branches, atomic and
exactly resumable checkpoints, DDP that follows the trainable set, and clear errors on bad data. What
differs between tasks (targets, loss, metrics, monitor) is the model's `transferkit.tasks.Task`; the
feature cache, checkpoints, processes and optimizers live in the modules beside this one.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from ..preprocessing import record_input_size
from ..tasks import get_task
from .arguments import check_trainer_arguments
from .best import BestEpoch, check_monitor
from .cache import DEFAULT_CACHE_BUDGET, PrefixCaches
from .callbacks import Callbacks
from .checkpoint import restore, resumable, resume_from, rollback_point, save_checkpoint, seed_everything
from .data_warnings import warn_small_inputs
from .distributed import join_processes, resolve_precision, shard_loader, wrap
from .evaluation import evaluate_batches, predict_batches
from .loaders import Feed, check_length, split_loaders
from .lr_find import LRFindResult, lr_find
from .one_sample import OneSampleBatches, all_skipped_message
from .optim import model_optimizer, phase_rates, start_schedule
from .phases import ProbeResult, finetune_start, keep_the_better, start_plan
from .prepare import prepare_data
from .progress import EpochProgress
from .recipe import DEFAULT_LR, Phase, Plan
from .running_loss import LossParts, sync_losses
from .step import AccumulationWindows, Step
from .worker_errors import plain_worker_errors

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["Trainer"]

_SHARED = set(
    "optimizer weight_decay scheduler loss precision grad_accum seed clip_grad_norm monitor".split()
)
_SHARED |= {"restore_best", "compile", "cache_budget", "cache_dir", "label_smoothing"}  # shared with phases
_SYNC_EVERY = 50  # training steps between host syncs (running loss, non-finite check)


class Trainer:
    """Fits a `TransferModel`: losses and metrics follow ``model.task``; one dict of results per epoch.

    Args:
        model: The model; its freeze policy (``model.freeze``) decides what trains, epoch by epoch. The
            Trainer never changes it when built; ``fit`` runs the ``recipe``.
        epochs: Number of epochs (of the fine-tune phase, for a recipe with a probe phase first).
        lr: Learning rate of the head; ``layer_decay`` and ``backbone_lr_mult`` scale it per block. None:
            1e-3, or a recipe's own rates (`recipe.PROBE_LR`; fine-tuning: `recipe.finetune_rates`).
        recipe: ``"auto"``: a pretrained classifier whose freeze state the user never chose is probed on
            cached features, then its top blocks fine-tuned from the probe's head, ending with the better
            of the two on validation data; any other model trains as frozen. ``"probe"``, ``"lp_ft"`` and
            ``"finetune"`` ask for one (`transferkit.training.recipe`); ``fit`` sets ``trainer.plan``.
        optimizer: ``"adamw"``, ``"adam"``, ``"sgd"`` (momentum 0.9) or ``callable(param_groups)``.
        weight_decay: Weight decay (norm and bias parameters get none).
        scheduler: ``"cosine"``, ``"step"`` (x0.1 at 1/3 and 2/3 of training), ``"onecycle"``, ``"none"``
            or ``callable(optimizer, total_steps)`` returning a scheduler; all step once per optimizer step.
        layer_decay: Learning-rate factor per block from the head towards the stem (e.g. 0.75; 1: none).
            None: 0.75 for a pretrained ViT-style backbone (one stride), none for others
            (`recipe.default_layer_decay`).
        loss: ``callable(logits, targets) -> scalar``; default: the task's (`transferkit.tasks`).
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a device.
        precision: ``"auto"`` (bf16 on CUDA if supported, else fp16 with a grad scaler; fp32 elsewhere),
            ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        grad_accum: Batches per optimizer step.
        clip_grad_norm: Maximum gradient norm, or None.
        cache_features: Compute the frozen prefix's outputs once per sample and train only the rest
            (validation too). Needs deterministic map-style loaders (a ValueError names any random
            transform) and frozen norm layers (``bn="frozen"``); matches an uncached run up to float noise;
            rebuilt where ``gradual`` moves the boundary; not under torchrun (`transferkit.training.cache`).
        cache_budget: Bytes of host memory the cached features may take (per loader); the rest is kept
            in files under a temporary directory that is deleted when ``fit`` ends.
        cache_dir: Where that temporary directory goes (default: the system's temp directory).
        checkpoint_dir: Directory for ``last.pt``, written atomically after every epoch (rank 0 only).
        resume: Continue from ``checkpoint_dir/last.pt`` when it exists.
        early_stopping: Patience: stop after this many epochs without improvement of ``monitor``.
        monitor: History key to track; the task's default is ``"val_loss"`` (detection: ``"val_map"``;
            ``"train_loss"`` without validation); keys ending in ``loss`` are minimised, others maximised.
        restore_best: With validation, end with the best (finite) epoch's weights (not a recipe's probe).
        progress: One bar per epoch where bars render, else one line per epoch (`training.progress`).
        callbacks: Objects with any of the methods ``on_fit_start``, ``on_epoch_start``, ``on_batch_end``
            (not for a skipped batch), ``on_epoch_end``, ``on_fit_end`` (the model holds the weights fit
            ends with), ``on_exception(trainer, error)`` (fit stopped on an error), each called with the
            trainer (all ranks: ``trainer.is_main``). ``trainer.should_stop = True`` ends fit after the epoch.
        seed: Seeds torch, random and numpy (plus the rank) at the start of ``fit``, and the sampler.
        backbone_lr_mult: Extra learning-rate factor for the whole backbone.
        compile: Train through ``torch.compile(model)``.
        label_smoothing: Cross-entropy label smoothing of the task's default loss (0: none); the
            validation loss is smoothed alike, so ``val_loss`` stays comparable with ``train_loss``.

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4))  # 8 images, 2 classes
        >>> train = val = DataLoader(data, batch_size=4)
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)  # logits [N, 2]
        >>> model.freeze(policy="gradual", n=0, step=1)
        >>> history = Trainer(model, epochs=3, progress=False).fit({"train": train, "val": val})
        >>> [row["trainable_blocks"] for row in history], sorted(history[-1])
        ([0, 1, 2], ['epoch', 'lr', 'seconds', 'train_loss', 'trainable_blocks', 'val_acc', 'val_loss'])
    """

    scheduler: Any  # built by fit(), over its number of optimizer steps
    history: list[dict[str, Any]]
    plan: Plan | None = None  # what fit() ran: the recipe's phases (`transferkit.training.recipe`)
    probe: ProbeResult | None = None  # the probe phase: its rows, validation score and weights
    kept: str | None = None  # the phase the model ended with, where the plan chose (``plan.select``)
    epoch = step = global_step = _first_epoch = 0  # counted by fit()
    should_stop = False
    loss: Tensor | None  # last training loss, on the device (read it without a sync)
    _net: nn.Module  # the training module (`_network`)
    _net_trainable: tuple[str, ...] | None  # the trainable parameters it was built for

    def __init__(
        self,
        model: TransferModel,
        *,
        epochs: int = 10,
        lr: float | None = None,
        recipe: str = "auto",
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
        label_smoothing: float = 0.0,
    ) -> None:
        check_trainer_arguments(locals())  # every argument by name, before anything is built
        self.model, self.task, self.epochs, self.lr = model, get_task(model.task), epochs, lr
        self.scheduler_spec, self.cache_features, self.resume = scheduler, cache_features, resume
        self.early_stopping, self.monitor, self.restore_best = early_stopping, monitor, restore_best
        self.callbacks, self.seed, self.compile = Callbacks(callbacks), seed, compile
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.device, self.rank, self.world_size = join_processes(device, cache_features)
        self.is_main, self.show_progress, self.recipe = self.rank == 0, progress and self.rank == 0, recipe
        self.amp_dtype = resolve_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        model.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stubs
        self.options = {k: v for k, v in locals().items() if k in _SHARED} | {"device": self.device}
        scales = {"layer_decay": layer_decay, "backbone_lr_mult": backbone_lr_mult}
        self.optimizer = model_optimizer(model, optimizer, lr or DEFAULT_LR, weight_decay, **scales)
        self.base_lrs = self._given_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.stepper = Step(  # device, precision, forward, loss, update: shared by every pass
            self.task, loss or self.task.training_loss(label_smoothing), self.optimizer, self.scaler,
            self.device, self.amp_dtype, self.memory_format, grad_accum=grad_accum,
            clip_grad_norm=clip_grad_norm, world_size=self.world_size,
        )  # fmt: skip
        self.scheduler, self.history, self.loss, self._net, self._net_trainable = None, [], None, model, None
        self.best = BestEpoch("val_loss", keep_weights=False)  # fit() renews it and the one-sample guard
        self._one_sample, self._size_from_batches = OneSampleBatches(), False
        self._cache = PrefixCaches(  # the frozen prefix's feature caches (cache_features=True)
            model, device=self.device, memory_format=self.memory_format, autocast=self.stepper.autocast,
            budget=cache_budget, directory=cache_dir, check_targets=self._check_targets,
            progress=self.show_progress, compile=compile,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------- fit
    @plain_worker_errors
    def fit(self, loaders: Any) -> list[dict[str, Any]]:
        """Trains for ``epochs`` epochs and returns the history (one dict per epoch).

        Args:
            loaders: ``{"train": loader, "val": loader}``, a ``(train, val)`` tuple or a train loader;
                batches are ``(inputs [N, C, H, W] float, targets)`` with targets ``[N]`` or masks
                ``[N, H, W]`` (``[N, 1, H, W]`` and uint8 masks are taken too). A model without class
                names (``model.classes``) takes them from the train loader's ``dataset.classes`` here.

        Returns:
            The history: per epoch ``epoch``, ``train_loss`` (mean batch loss), ``lr`` (the head's, at the
            epoch's start), ``trainable_blocks`` (count), ``seconds``, and with validation ``val_loss``
            plus ``val_acc`` (and ``val_top5`` above 5 classes) or ``val_miou`` and ``val_acc``.
            Detection: ``train_loss_<part>`` for each part of the loss dict, and ``val_map`` and
            ``val_map_50`` (COCO mAP) without a ``val_loss``; targets are lists of box dicts. A recipe
            with phases adds ``phase`` (``"probe"``, ``"finetune"``); its epochs count on across them.

        Raises:
            ValueError: An empty loader, targets outside ``[0, num_classes)``, float targets for the default
                loss, NaN or infinite validation inputs, only batches of one sample BatchNorm cannot
                normalise (`training.one_sample`: the model keeps its last complete epoch), a bad ``monitor``.
            TypeError: A Dataset where a loader belongs, or batches that are not ``(inputs, targets)``
                with float inputs (dicts, uint8 images).
            FloatingPointError: A non-finite loss; the model keeps the weights of the last good epoch.
            CheckpointError: ``resume=True``, ``last.pt`` damaged or of another model or recipe (file kept).
        """
        train, val, self._size_from_batches = prepare_data(self.model, loaders)
        train, val = self._shard(train, train=True), self._shard(val, train=False)
        monitor = self.monitor or self.task.default_monitor(has_val=val is not None)
        check_monitor(monitor, has_val=val is not None)
        last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None
        ckpt = resumable(self, last)  # read and checked before anything changes
        finetune = start_plan(self, train, val, ckpt)  # decides (resuming: the checkpoint's), prints, probes
        self.history = list(self.probe.rows) if self.probe is not None else []  # a copy: rows go on
        if finetune is None:  # the probe alone: callbacks see the start and the end of fit, with its rows
            self.callbacks.emit("on_fit_start", self)
            self.callbacks.emit("on_fit_end", self)
            return self.history
        start = self._start_finetune(finetune, train, val is not None, monitor, last, ckpt)
        try:
            self._run_epochs(train, val, start)
        except BaseException as error:  # Ctrl-C included: the callbacks hear why fit stopped
            self.callbacks.emit_exception(self, error)
            raise
        finally:
            self._cache.close()
        self.best.restore(self.model)
        self.kept = keep_the_better(self.model, self.plan, self.probe, self.best, self.history)
        self.callbacks.emit("on_fit_end", self)  # with the weights fit ends with
        return self.history

    def _start_finetune(
        self, finetune: Phase, train: Any, has_val: bool, monitor: str, last: Path | None, ckpt: Any
    ) -> int:
        """Seeds, schedules and resets the fine-tune phase (the plain loop of a model trained as frozen);
        resumes from ``ckpt`` (read from ``last``) when given. Returns the first epoch to run."""
        if self.seed is not None:
            seed_everything(self.seed + self.rank)
        rates = phase_rates(finetune, self._given_lrs, self.optimizer, built=self.lr or DEFAULT_LR)
        total_steps = self.epochs * math.ceil(len(train) / self.stepper.grad_accum)
        self.base_lrs, self.scheduler = start_schedule(
            self.scheduler_spec, self.optimizer, rates, total_steps
        )
        probe = self.plan.phase("probe") if self.plan is not None else None
        self._first_epoch = probe.epochs if probe is not None else 0  # its epochs count on from the probe's
        self.should_stop, self._one_sample, self.global_step = False, OneSampleBatches(), 0
        self.best = BestEpoch(monitor, has_val and self.restore_best, self.early_stopping)
        start = resume_from(self, ckpt, last, train) if ckpt is not None and last else self._first_epoch
        if self.cache_features:
            self._cache.check(train, start - self._first_epoch, self.epochs)
        return start

    def _run_epochs(self, train: Any, val: Any, start: int) -> None:
        self.callbacks.emit("on_fit_start", self)
        for epoch in range(start, self._first_epoch + self.epochs):
            if self.should_stop or self.best.out_of_patience(epoch):
                break
            self.epoch, started = epoch, time.perf_counter()
            self.model.apply_schedule(epoch - self._first_epoch)  # the phase's own epoch
            net = self._network()
            if isinstance(getattr(train, "sampler", None), DistributedSampler):
                train.sampler.set_epoch(epoch)
            self.callbacks.emit("on_epoch_start", self)
            row = {
                **({"phase": "finetune"} if self._first_epoch else {}),
                "epoch": epoch,
                "lr": max(g["lr"] for g in self.optimizer.param_groups),
                "trainable_blocks": len(self.model.trainable_blocks),
            }
            batches = self._batches(train, "train")
            desc = f"epoch {epoch + 1}/{self._first_epoch + self.epochs}"
            total = len(train) + (len(val) if val is not None else 0)
            with (
                rollback_point(self.model, self._cache.directory) as last_good,
                EpochProgress(desc, total, self.show_progress) as bar,
            ):
                try:
                    row.update(self._train_epoch(net, batches, bar))
                    if val is not None:
                        metrics = evaluate_batches(self, self._batches(val, "val"), epoch, bar)
                        row.update({f"val_{k}": v for k, v in metrics.items()})
                except (ValueError, FloatingPointError):
                    restore(self.model, last_good, self.device)  # bad data or divergence: keep the last good
                    raise
                row["seconds"] = time.perf_counter() - started
                bar.finish(row)
            self.history.append(row)
            self.best.update(row, self.model)
            if self.checkpoint_dir is not None and self.is_main:
                save_checkpoint(self, self.checkpoint_dir / "last.pt", train)
            self.callbacks.emit("on_epoch_end", self)

    def _train_epoch(self, net: nn.Module, feed: Feed, bar: EpochProgress) -> dict[str, float]:
        """One pass over ``feed``; the mean batch loss (over all ranks) and of each part of the loss.
        A batch of one sample that BatchNorm cannot normalise is skipped (`training.one_sample`)."""
        self.model.train()
        n, pending, loss_total, parts = len(feed), [], 0.0, LossParts()
        windows, step_fn, module = AccumulationWindows(n, self.stepper.grad_accum), self.stepper, feed.module
        for step, batch in enumerate(feed.batches):
            self.step, where = step, f"epoch {self.epoch + 1}, batch {step + 1}"
            inputs, targets = feed.split(batch, self.task, where)
            if self._size_from_batches:  # loaders that do not say their preprocessing still show the size
                record_input_size(self.model, inputs)
                warn_small_inputs(self.model, inputs)
                self._size_from_batches = False
            feed.check(self.task, inputs, targets, self.model.num_classes, where)
            inputs, targets = step_fn.to_device(inputs, targets)
            probe = functools.partial(step_fn.forward, module or self.model, inputs)
            skip = self._one_sample.skips(self.model, inputs, probe, where, feed.batches)
            if skip:
                windows.skip(step)
                pending.append(torch.zeros((), device=self.device))  # later batches keep their numbers
            else:
                self.loss, outputs = step_fn.backward(module or net, inputs, targets, windows, step)
                parts.add(self.task.loss_parts(outputs))
                pending.append(self.loss)
            if step_fn.update(self.model.parameters(), windows, step):
                self.scheduler.step()
                self.global_step += 1
            bar.update()
            if len(pending) == _SYNC_EVERY or step + 1 == n:
                loss_total += sync_losses(pending, step + 1 - len(pending), self.epoch, self.world_size)
                bar.set_postfix(loss=f"{loss_total / max(windows.trained, 1):.4f}")
                pending = []
            if not skip:
                self.callbacks.emit("on_batch_end", self)
        if not windows.trained:
            raise ValueError(all_skipped_message(f"every training batch of epoch {self.epoch + 1}"))
        if self.world_size > 1:
            # DDP broadcasts rank 0's buffers before each forward, so after the last step every rank holds
            # its own batch statistics; share rank 0's so that validation and the final weights agree.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
        return {"train_loss": loss_total / windows.trained, **parts.means(self.world_size)}

    def _batches(self, loader: Any, role: str) -> Feed:
        """``loader`` for the model, or with ``cache_features`` this epoch's cached batches, their module."""
        return self._cache.epoch(loader, role) if self.cache_features else Feed(loader)

    def lr_find(self, loader: Any, **kwargs: Any) -> LRFindResult:
        """Range test of the rate ``lr`` sets (a recipe's: its fine-tune phase's); `training.lr_find`."""
        with finetune_start(self, split_loaders(loader)[0]) as start:
            return lr_find(self, loader, prepare=start, **kwargs)

    # ------------------------------------------------------------------------------ evaluate, predict
    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Loss and metrics over ``loader`` (all ranks under DDP): ``{"loss", "acc", ...}``.

        Classification reports ``acc`` (and ``top5`` with more than 5 classes); segmentation ``miou`` and
        pixel ``acc``; detection ``map`` and ``map_50`` (COCO mAP, no loss). The loss is averaged over
        samples.

        Examples:
            >>> trainer.evaluate(val_loader)
            {'loss': 0.31, 'acc': 0.9}
        """
        check_length(loader, "evaluation")
        return evaluate_batches(self, Feed(self._shard(loader, train=False)))

    def predict(self, loader: Iterable[Any]) -> Any:
        """Outputs for every batch of ``loader``, in loader order, on the CPU in float32 (detection: a list
        with one ``{"boxes", "scores", "labels"}`` per image).

        Batches may be inputs alone or ``(inputs, targets)``. Each rank predicts the whole loader.

        Examples:
            >>> trainer.predict(test_loader).shape  # 10 images, 2 classes
            torch.Size([10, 2])
        """
        return predict_batches(self, loader)

    def _check_targets(self, targets: Tensor, where: str) -> None:  # CPU targets: the check needs no sync
        self.task.check_targets(targets, self.model.num_classes, where)

    def _network(self) -> nn.Module:
        """The training module (`transferkit.training.distributed.wrap`), rebuilt when what trains changes."""
        trainable = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        if trainable != self._net_trainable:
            self._net = self.model  # drop the old wrapper (and its autograd hooks) first
            self._net = wrap(self.model, self.device, self.world_size, self.compile)
            self._net_trainable = trainable
        return self._net

    def _shard(self, loader: Any, train: bool) -> Any:
        rank, size, seed = self.rank, self.world_size, self.seed or 0
        return shard_loader(loader, rank=rank, world_size=size, seed=seed, train=train)
