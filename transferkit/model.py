"""TransferModel: backbone -> neck -> head, with freezing; build_model and load_model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import create_backbone, resolve_name
from .features import FeatureInfo
from .freeze import FreezeState, block_modules, is_norm, param_groups, summary_table
from .heads import HEADS
from .necks import NECKS

__all__ = ["TransferModel", "build_model", "load_model"]

_IMAGENET = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
}


class TransferModel(nn.Module):
    """A backbone, a neck and a head; knows how to freeze and unfreeze itself.

    Build it with `build_model`. ``forward`` is backbone -> neck -> head.

    Args:
        backbone: Returns a list of feature maps and has ``feature_info`` and ``blocks``.
        neck: Maps the list of maps to a list of maps; has ``feature_info``.
        head: Maps the list and the input size to the output; its ``task`` is
            ``"classification"`` or ``"segmentation"``.
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
        self._freeze = FreezeState()
        self._block_modules = block_modules(backbone, backbone.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` (classification) or ``[N, num_classes, H, W]`` (segmentation)."""
        features = self.neck(self.backbone(x))
        return self.head(features, tuple(x.shape[-2:]))

    @property
    def task(self) -> str:
        """``"classification"`` or ``"segmentation"``, from the head."""
        return getattr(self.head, "task", "classification")

    @property
    def num_classes(self) -> int:
        """Output classes of the head."""
        return int(self.config["num_classes"])

    @property
    def data_config(self) -> dict[str, Any]:
        """Preprocessing of the backbone's pretrained weights: input size, mean, std, interpolation."""
        return dict(getattr(self.backbone, "data_config", _IMAGENET))

    @property
    def levels_read(self) -> set[int]:
        """Indices of the backbone levels the neck and head actually read (the others need no cache)."""
        every = set(range(len(self.backbone.feature_info)))
        head_levels = set(getattr(self.head, "levels", every))
        read = getattr(self.neck, "levels_read", None)
        return read(head_levels) if read is not None else every

    @property
    def blocks(self) -> list[str]:
        """Backbone block names, input to output (the stem first)."""
        return list(self.backbone.blocks)

    @property
    def trainable_blocks(self) -> list[str]:
        """Names of the blocks that train now."""
        k = self._freeze.num_trainable(len(self.blocks))
        return self.blocks[len(self.blocks) - k :]

    def freeze(
        self,
        policy: str = "all",
        *,
        n: int | None = None,
        step: int | None = None,
        every: int | None = None,
        bn: str = "frozen",
    ) -> None:
        """Freeze backbone blocks; the neck and head always train.

        Args:
            policy: ``"all"`` (the whole backbone), ``"last_n"`` (only the last ``n`` blocks train),
                ``"gradual"`` (the last ``n + step * (epoch // every)`` train; see `apply_schedule`)
                or ``"none"``.
            n: Blocks that train (``last_n``), or at epoch 0 (``gradual``, default 0).
            step: Blocks unfrozen per stage (``gradual``, default 1).
            every: Epochs per stage (``gradual``, default 1).
            bn: ``"frozen"`` keeps the norm layers of frozen blocks in eval mode (running statistics
                fixed) through any ``train()``; ``"train"`` lets them update their statistics.

        Raises:
            ValueError: an unknown policy, an argument the policy does not take, or ``n`` outside
                ``[0, len(model.blocks)]``.
        """
        self._freeze = FreezeState.make(policy, len(self.blocks), bn, n=n, step=step, every=every)
        self._apply_freeze()

    def unfreeze(self) -> None:
        """Let everything train."""
        self.freeze("none")

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
        state = dict(state)
        unknown = sorted(set(state) - {"policy", "n", "step", "every", "bn", "epoch"})
        if unknown:
            raise ValueError(
                f"not a freeze state: unexpected keys {', '.join(unknown)}; "
                "pass what model.freeze_state() returned"
            )
        epoch = state.get("epoch", 0)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"freeze state epoch must be an int >= 0, got {epoch!r}")
        freeze = FreezeState.make(
            state.get("policy", "none"),
            len(self.blocks),
            state.get("bn", "frozen"),
            n=state.get("n"),
            step=state.get("step"),
            every=state.get("every"),
        )
        freeze.epoch = epoch
        self._freeze = freeze
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        trainable = set(self.trainable_blocks)
        named = dict(self.backbone.named_parameters())
        for block, params in self.backbone.blocks.items():
            for p in params:
                named[p].requires_grad_(block in trainable)
        for p in [*self.neck.parameters(), *self.head.parameters()]:
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        """Set train/eval mode; frozen blocks stay in eval mode (norm layers too unless ``bn="train"``)."""
        super().train(mode)
        if mode:
            trainable = set(self.trainable_blocks)
            for block, modules in self._block_modules.items():
                if block in trainable:
                    continue
                for m in modules:
                    if not (self._freeze.bn == "train" and is_norm(m)):
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

    def freeze_summary(self) -> str:
        """A table: block, parameter count, trainable, norm mode; then the neck and head."""
        trainable = set(self.trainable_blocks)
        named = dict(self.backbone.named_parameters())
        rows = []
        for block, params in self.backbone.blocks.items():
            norms = [m for m in self._block_modules[block] if is_norm(m)]
            frozen_norms = block not in trainable and self._freeze.bn == "frozen"
            mode = "-" if not norms else "eval (frozen)" if frozen_norms else "train"
            rows.append((block, sum(named[p].numel() for p in params), block in trainable, mode))
        for part in ("neck", "head"):
            module = getattr(self, part)
            mode = "train" if any(is_norm(m) for m in module.modules()) else "-"
            rows.append((part, sum(p.numel() for p in module.parameters()), True, mode))
        return summary_table(rows)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and freeze state) to ``directory``."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metadata = {"freeze_state": json.dumps(self.freeze_state())}
        _atomic_write(directory / "model.safetensors", lambda p: save_model(self, p, metadata=metadata))
        text = json.dumps(self.config, indent=2, default=str) + "\n"
        _atomic_write(directory / "config.json", lambda p: Path(p).write_text(text))
        return directory


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_backbone(backbone: nn.Module) -> None:
    if not isinstance(getattr(backbone, "feature_info", None), FeatureInfo):
        raise TypeError(
            f"a backbone module must have a `feature_info` (transferkit.FeatureInfo) describing its levels; "
            f"{type(backbone).__name__} has none"
        )
    if not hasattr(backbone, "blocks"):
        backbone.blocks = {"backbone": [n for n, _ in backbone.named_parameters()]}


def build_model(
    backbone: str | nn.Module,
    *,
    neck: str = "identity",
    head: str = "linear",
    num_classes: int,
    pretrained: bool | str | os.PathLike[str] = True,
    in_chans: int = 3,
    out_indices: list[int] | tuple[int, ...] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
) -> TransferModel:
    """Compose a pretrained backbone, a neck and a head into a `TransferModel`.

    Args:
        backbone: ``"resnet18"`` (torchvision when it has the name, else timm), ``"torchvision/..."``,
            ``"timm/..."``, a registered name, or an ``nn.Module`` with ``feature_info`` (and ``blocks``).
        neck: ``"identity"`` or ``"fpn_lite"`` (see ``list_necks()``).
        head: ``"linear"`` (classification) or ``"fcn"`` (segmentation) (see ``list_heads()``).
        num_classes: Output classes, >= 1.
        pretrained: ``True`` (the source's default weights), ``False``, a weights tag
            (``"IMAGENET1K_V2"``, ``"a1_in1k"``) or a path to a ``.safetensors``/``.pth``/``.pt`` file
            holding the original model's state_dict (its classifier keys are ignored).
        in_chans: Input channels.
        out_indices: Which backbone levels to use (default: all).
        backbone_kwargs: Passed to the torchvision/timm model builder.
        neck_kwargs: Passed to the neck (``out_channels`` for ``fpn_lite``).
        head_kwargs: Passed to the head (``dropout``, ...).

    Returns:
        The model; ``model.config`` rebuilds it with ``build_model(**model.config)``.

    Examples:
        >>> model = build_model("resnet18", neck="fpn_lite", head="fcn", num_classes=3, pretrained=False)
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    backbone_kwargs = dict(backbone_kwargs or {})
    clash = sorted({"pretrained", "in_chans", "out_indices"} & set(backbone_kwargs))
    if clash:
        raise ValueError(f"pass {', '.join(clash)} to build_model directly, not in backbone_kwargs")
    neck_cls, head_cls = NECKS.get(neck), HEADS.get(head)
    if isinstance(backbone, nn.Module):
        _check_backbone(backbone)
        name = f"<module {type(backbone).__name__}>"
        built = backbone
    else:
        name = resolve_name(backbone)
        if isinstance(pretrained, os.PathLike):
            pretrained = os.fspath(pretrained)
        built = create_backbone(
            name, pretrained=pretrained, in_chans=in_chans, out_indices=out_indices, **backbone_kwargs
        )
        _check_backbone(built)
        # library backbones report the arguments they resolved (torchvision's transform_input, timm's levels)
        resolved = getattr(built, "config", {})
        backbone_kwargs.update(
            {k: v for k, v in resolved.items() if k not in ("pretrained", "in_chans", "out_indices")}
        )
        out_indices = resolved.get("out_indices", out_indices)
    neck_module = neck_cls(built.feature_info, **(neck_kwargs or {}))
    head_module = head_cls(neck_module.feature_info, num_classes, **(head_kwargs or {}))
    config = {
        "backbone": name,
        "neck": neck,
        "head": head,
        "num_classes": num_classes,
        "pretrained": pretrained,
        "in_chans": in_chans,
        "out_indices": list(out_indices) if out_indices is not None else None,
        "backbone_kwargs": backbone_kwargs,
        "neck_kwargs": dict(neck_kwargs or {}),
        "head_kwargs": dict(head_kwargs or {}),
    }
    return TransferModel(built, neck_module, head_module, config)


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> TransferModel:
    """Load a model written by `TransferModel.save`: same architecture, weights and freeze state.

    Examples:
        >>> model.save("runs/ants_bees")  # doctest: +SKIP
        >>> model = load_model("runs/ants_bees")  # doctest: +SKIP
    """
    from safetensors import safe_open
    from safetensors.torch import load_model as load_weights

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: load_model expects a directory written by model.save()"
            )
    config = json.loads(config_path.read_text())
    if str(config.get("backbone", "")).startswith("<module"):
        raise ValueError(
            f"{directory} holds a model with a custom backbone module; rebuild it and load the weights"
        )
    model = build_model(**{**config, "pretrained": False})
    model.config["pretrained"] = config["pretrained"]
    load_weights(model, str(weights_path), strict=True, device=str(map_location))
    with safe_open(str(weights_path), framework="pt") as f:
        freeze = (f.metadata() or {}).get("freeze_state")
    if freeze:
        model.load_freeze_state(json.loads(freeze))
    return model
