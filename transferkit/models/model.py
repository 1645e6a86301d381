"""TransferModel: backbone -> neck -> head, with freezing (built by `transferkit.models.build`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io.serialization import save_model
from ..preprocessing import DEFAULT_DATA_CONFIG, resolve_data_config
from ..tasks import get_task
from .classes import check_class_names
from .features import FeatureInfo
from .freeze import FreezeState, Table, block_modules, is_norm, param_groups, summary_table
from .peft import PEFT_POLICIES, add_lora, has_lora, merge_lora, resolve_targets, trainable_names

__all__ = ["TransferModel"]


class TransferModel(nn.Module):
    """A backbone, a neck and a head; knows how to freeze and unfreeze itself.

    Build it with `build_model`. ``forward`` is backbone -> neck -> head.

    Args:
        backbone: Returns a list of feature maps and has ``feature_info`` and ``blocks``.
        neck: Maps the list of maps to a list of maps; has ``feature_info``.
        head: Maps the list and the input size to the output; its ``task`` is
            ``"classification"``, ``"segmentation"`` or ``"detection"``.
        config: The `build_model` arguments that rebuild this architecture.

    Examples:
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 2])
        >>> model.freeze(policy="last_n", n=4)
        >>> model.trainable_blocks
        ['layer3.0', 'layer3.1', 'layer4.0', 'layer4.1']
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.config = config
        self._block_modules = block_modules(backbone, _blocks_of(backbone))
        self._freeze = FreezeState(bn=self._default_bn())
        self._apply_freeze()

    def forward(self, x: torch.Tensor, targets: Any = None) -> Any:
        """Logits ``[N, K]`` or ``[N, K, H, W]``; detection: the loss dict (training, with ``targets``)
        or one ``{"boxes", "scores", "labels"}`` per image. ``targets`` reach the head only when given."""
        features = self.neck(self.backbone(x))
        if targets is None:
            return self.head(features, tuple(x.shape[-2:]))
        return self.head(features, tuple(x.shape[-2:]), targets)

    @property
    def task(self) -> str:
        """``"classification"``, ``"segmentation"`` or ``"detection"``, from the head."""
        return getattr(self.head, "task", "classification")

    @property
    def num_classes(self) -> int:
        """Output classes of the head."""
        return int(self.config["num_classes"])

    @property
    def classes(self) -> list[str]:
        """Class names by output index (``"0" .. "K-1"`` until known); see `transferkit.models.classes`."""
        names = self.config.get("classes")
        return list(names) if names is not None else [str(i) for i in range(self.num_classes)]

    @classes.setter
    def classes(self, names: Sequence[str] | None) -> None:
        self.config["classes"] = check_class_names(names, self.num_classes)

    def predict(
        self,
        images: Any,
        *,
        top_k: int = 5,
        image_size: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> Any:
        """Top classes with probabilities, masks or boxes for images: `transferkit.inference.predict_images`
        (detection keeps boxes scoring ``score_threshold``, default 0.3, at most ``max_detections``).

        >>> model.predict("bee.jpg", top_k=2)  # doctest: +SKIP
        [('bees', 0.968), ('ants', 0.032)]
        """
        from ..inference import predict_images

        return predict_images(
            self, images, top_k=top_k, image_size=image_size, score_threshold=score_threshold,
            max_detections=max_detections,
        )  # fmt: skip

    @property
    def data_config(self) -> dict[str, Any]:
        """The evaluation preprocessing: input size, mean, std, interpolation, crop fraction.

        What the model was trained at once the Trainer has seen transferkit's loaders (or after
        ``model.data_config = {...}``); before that, the backbone's pretrained weights' (see
        `transferkit.preprocessing`). Saved with the model; ``predict``, ``evaluate`` and ``export`` use it.

        >>> model.data_config = {"input_size": (3, 64, 64)}  # doctest: +SKIP
        """
        stored = self.config.get("data_config")
        return dict(stored) if stored is not None else dict(self._pretrained_data_config)

    @data_config.setter
    def data_config(self, config: dict[str, Any] | None) -> None:
        # keys not given keep the backbone's pretrained values; None goes back to them
        resolved = None if config is None else resolve_data_config(config, base=self._pretrained_data_config)
        self.config["data_config"] = resolved

    @property
    def _pretrained_data_config(self) -> dict[str, Any]:
        return dict(getattr(self.backbone, "data_config", DEFAULT_DATA_CONFIG))

    @property
    def levels_read(self) -> set[int]:
        """Indices of the backbone levels the neck and head actually read (the others need no cache)."""
        every = set(range(len(_feature_info_of(self.backbone))))
        head_levels = set(getattr(self.head, "levels", every))
        read = getattr(self.neck, "levels_read", None)
        return read(head_levels) if read is not None else every

    @property
    def blocks(self) -> list[str]:
        """Backbone block names, input to output (the stem first)."""
        return list(_blocks_of(self.backbone))

    @property
    def trainable_blocks(self) -> list[str]:
        """Names of the blocks that train now (under ``lora``, ``bitfit``, ``norm``: that train in part)."""
        if self._freeze.parameter_efficient:
            chosen = trainable_names(self.backbone, self._freeze.policy)
            return [b for b, ps in _blocks_of(self.backbone).items() if chosen.intersection(ps)]
        k = self._freeze.num_trainable(len(self.blocks))
        return self.blocks[len(self.blocks) - k :]

    def freeze(
        self,
        policy: str = "all",
        *,
        n: int | None = None,
        step: int | None = None,
        every: int | None = None,
        bn: str | None = None,
        r: int | None = None,
        alpha: float | None = None,
        targets: Sequence[str] | str | None = None,
        dropout: float | None = None,
    ) -> None:
        """Freeze backbone blocks, or all but a few parameters; the neck and head always train.

        Args:
            policy: ``"all"`` (the whole backbone), ``"last_n"`` (only the last ``n`` blocks train),
                ``"gradual"`` (the last ``n + step * (epoch // every)`` train; see `apply_schedule`),
                ``"none"``; or a parameter-efficient one, which keeps every pretrained weight as it is:
                ``"lora"`` (low-rank adapters on ``targets``, through the ``peft`` extra; see `merge`),
                ``"bitfit"`` (the backbone's biases train) or ``"norm"`` (its norm layers' affine
                parameters train).
            n: Blocks that train (``last_n``), or at epoch 0 (``gradual``, default 0).
            step: Blocks unfrozen per stage (``gradual``, default 1).
            every: Epochs per stage (``gradual``, default 1).
            bn: ``"frozen"`` keeps the norm layers of frozen blocks in eval mode (running statistics
                fixed) through any ``train()``; ``"train"`` lets them update their statistics;
                ``"frozen_all"`` fixes every backbone norm layer (statistics and affine parameters), as
                torchvision's detectors do. Default: the task's (``frozen_all`` for detection with
                pretrained weights, else ``frozen``); ``frozen`` under the parameter-efficient
                policies, where every norm layer keeps its statistics.
            r: LoRA's rank (default 8).
            alpha: LoRA's scale numerator: the update is ``alpha / r * B @ A`` (default 16).
            targets: The layers LoRA adapts, by name or name ending (``["qkv", "fc1", "fc2"]``).
                Default: a transformer's attention and MLP linears; a CNN's convolutions in its top
                third of blocks.
            dropout: Dropout on LoRA's input (default 0).

        Raises:
            ValueError: an unknown policy, an argument the policy does not take, ``n`` outside
                ``[0, len(model.blocks)]``, or LoRA targets that pick no layer.
            ImportError: ``policy="lora"`` without the ``peft`` package.

        Examples:
            >>> model = build_model("resnet18", num_classes=2, pretrained=False)
            >>> model.freeze("bitfit")
            >>> sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
            4800
        """
        if bn is None:
            bn = "frozen" if policy in PEFT_POLICIES else self._default_bn()
        lora = {"r": r, "alpha": alpha, "targets": targets, "dropout": dropout}
        state = FreezeState.make(policy, len(self.blocks), bn, n=n, step=step, every=every, **lora)
        if state.adapters is not None:
            state.adapters["targets"] = resolve_targets(self.backbone, targets, _blocks_of(self.backbone))
        self._set_adapters(state, self._freeze.adapters if state.adapters is None else state.adapters)
        self._freeze = state
        self._freeze_chosen = True  # the Trainer's default recipe never overrides it
        self._apply_freeze()

    def _set_adapters(self, state: FreezeState, adapters: dict[str, Any] | None) -> None:
        """Give the backbone ``adapters`` (LoRA settings; None: none) and record them in ``state``."""
        current = self._freeze.adapters if has_lora(self.backbone) else None
        if current is not None and adapters != current:
            raise ValueError(
                f"the model already carries LoRA adapters ({ {k: current[k] for k in ('r', 'alpha')} } on "
                f"{len(current['targets'])} layers); call model.merge() first to fold them in, or build "
                "the model again"
            )
        if current is None and adapters is not None:
            add_lora(self.backbone, adapters)
            self._block_modules = block_modules(self.backbone, _blocks_of(self.backbone))
        state.adapters = adapters

    def merge(self) -> None:
        """Fold the LoRA adapters into the backbone's weights and remove them: the same outputs, no extra
        cost in inference or export. A ``lora`` policy becomes ``all`` (the backbone frozen).

        Raises:
            ValueError: the model carries no adapters.

        Examples:
            >>> model.freeze("lora", r=4)  # doctest: +SKIP
            >>> model.merge()  # doctest: +SKIP
        """
        if not has_lora(self.backbone):
            raise ValueError("the model carries no LoRA adapters to merge; freeze(policy='lora') adds them")
        merge_lora(self.backbone)
        self._block_modules = block_modules(self.backbone, _blocks_of(self.backbone))
        if self._freeze.policy == "lora":
            self._freeze = FreezeState.make("all", len(self.blocks), self._freeze.bn)
        self._freeze.adapters = None
        self._apply_freeze()

    def _default_bn(self) -> str:
        return get_task(self.task).default_bn(self.config.get("pretrained", True))

    def unfreeze(self) -> None:
        """Let everything train, norm layers included (also a pretrained detector's, see `freeze`)."""
        self.freeze("none", bn="frozen")

    def apply_schedule(self, epoch: int) -> None:
        """Set the trainable blocks for ``epoch`` (from 0); only ``gradual`` changes with it."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0 (epochs count from 0), got {epoch!r}")
        self._freeze.epoch = int(epoch)
        self._apply_freeze()

    def freeze_state(self) -> dict[str, Any]:
        """The freeze policy, its arguments and the schedule's epoch (for checkpoints)."""
        return self._freeze.to_dict()

    def load_freeze_state(self, state: dict[str, Any]) -> None:
        """Restore what `freeze_state` returned (validated against this model's blocks).

        Raises:
            ValueError: the state does not come from `freeze_state`, or does not fit this backbone
                (for example ``n`` larger than ``len(model.blocks)``).
        """
        freeze = FreezeState.from_dict(state, len(self.blocks))
        self._set_adapters(freeze, freeze.adapters)
        self._freeze = freeze
        self._freeze_chosen = True
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        trainable = set(self.trainable_blocks)
        named = dict(self.backbone.named_parameters())
        chosen = (
            trainable_names(self.backbone, self._freeze.policy) if self._freeze.parameter_efficient else None
        )
        for block, params in _blocks_of(self.backbone).items():
            for name in params:
                named[name].requires_grad_(block in trainable if chosen is None else name in chosen)
        if self._freeze.bn == "frozen_all":  # as FrozenBatchNorm2d: the affine parameters stay too
            for norm in filter(is_norm, self.backbone.modules()):
                norm.requires_grad_(False)
        for p in [*self.neck.parameters(), *self.head.parameters()]:
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        """Set train/eval mode; frozen blocks stay in eval mode (norm layers too unless ``bn="train"``;
        under ``bn="frozen_all"`` every backbone norm layer)."""
        super().train(mode)
        if mode:
            trainable = set(self.trainable_blocks)
            for block, modules in self._block_modules.items():
                for m in modules:
                    if self._freeze.keeps_eval(block in trainable, is_norm(m)):
                        m.training = False
        return self

    def param_groups(
        self,
        lr: float,
        layer_decay: float | None = None,
        backbone_lr_mult: float = 1.0,
        weight_decay: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one per backbone block (frozen ones too), the neck, the head.

        Frozen blocks are included so the optimizer's layout never changes when they unfreeze.
        Norm and bias parameters (1-d), learned tokens and position embeddings (``cls_token``,
        ``pos_embed``, ...) get no weight decay, so each unit may give two groups.

        Args:
            lr: The head's learning rate.
            layer_decay: When set, block ``i`` of ``B`` gets ``lr * layer_decay ** (B - i)``: rates fall
                geometrically from the head towards the stem.
            backbone_lr_mult: Multiplies every backbone block's rate.
            weight_decay: For the weight matrices and kernels.

        Examples:
            >>> model = build_model("resnet18", num_classes=2, pretrained=False)
            >>> groups = model.param_groups(1e-3, layer_decay=0.5)
            >>> torch.optim.AdamW(groups).param_groups[0]["lr"]  # the stem: 1e-3 * 0.5 ** 9
            1.953125e-06
        """
        return param_groups(
            self, lr, layer_decay=layer_decay, backbone_lr_mult=backbone_lr_mult, weight_decay=weight_decay
        )

    def freeze_summary(self) -> Table:
        """A table: block, parameter count, trainable, norm mode; then the neck and head (`freeze.Table`)."""
        trainable = set(self.trainable_blocks)
        named = dict(self.backbone.named_parameters())
        rows = []
        for block, params in _blocks_of(self.backbone).items():
            norms = [m for m in self._block_modules[block] if is_norm(m)]
            frozen_norms = self._freeze.keeps_eval(block in trainable, norm=True)
            mode = "-" if not norms else "eval (frozen)" if frozen_norms else "train"
            trains = sum(named[p].numel() for p in params if named[p].requires_grad)
            rows.append((block, sum(named[p].numel() for p in params), trains, mode))
        for part in ("neck", "head"):
            module = getattr(self, part)
            mode = "train" if any(is_norm(m) for m in module.modules()) else "-"
            count = sum(p.numel() for p in module.parameters())
            rows.append((part, count, count, mode))
        return summary_table(rows)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and freeze state) to ``directory``."""
        return save_model(self, directory)

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        input_size: Sequence[int] | None = None,
        normalize_in_graph: bool = False,
    ) -> Path:
        """Write an ONNX (``.onnx``), ``torch.export`` (``.pt2``) or TorchScript (``.ts``) file that states
        its preprocessing; see `transferkit.io.export.export`."""
        from ..io.export import export

        return export(self, path, input_size=input_size, normalize_in_graph=normalize_in_graph)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the saved model and a model card to the Hugging Face Hub (`transferkit.io.hub`)."""
        from ..io.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


def _blocks_of(backbone: nn.Module) -> dict[str, list[str]]:
    """The backbone's ``{block name: [parameter names]}``, which `build_model` gives every backbone."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, dict):
        raise TypeError(
            f"backbone {type(backbone).__name__} has no blocks dict {{block name: [parameter names]}}; "
            "build the model with build_model, which adds one"
        )
    return blocks


def _feature_info_of(backbone: nn.Module) -> FeatureInfo:
    """The backbone's `FeatureInfo` (`build_model` checks that it has one)."""
    info = getattr(backbone, "feature_info", None)
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"backbone {type(backbone).__name__} has no feature_info (a transferkit.FeatureInfo)")
    return info
