"""Freeze policies, the norm-layer guard, and per-block optimizer parameter groups."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .peft import LORA_DEFAULTS, PEFT_POLICIES, check_adapters

__all__ = ["FreezeState", "POLICIES", "Table", "block_modules", "is_norm", "param_groups", "summary_table"]

# The arguments each policy takes, with their defaults; the parameter-efficient ones are in `peft`.
POLICIES: dict[str, dict[str, Any]] = {
    "none": {},
    "all": {},
    "last_n": {"n": -1},
    "gradual": {"n": 0, "step": 1, "every": 1},
    "lora": LORA_DEFAULTS,
    "bitfit": {},
    "norm": {},
}
# frozen: norm layers of frozen blocks stay in eval mode; train: they update their statistics (fastai);
# frozen_all: every backbone norm layer keeps its statistics and affine parameters, as torchvision's
# detectors do with FrozenBatchNorm2d (detection's default with pretrained weights).
BN_MODES = ("frozen", "train", "frozen_all")


@dataclass
class FreezeState:
    """What is frozen: the policy, its arguments and the epoch the schedule is at (JSON-able)."""

    policy: str = "none"
    n: int | None = None
    step: int | None = None
    every: int | None = None
    bn: str = "frozen"
    epoch: int = 0
    adapters: dict[str, Any] | None = None  # LoRA's settings while the model carries adapters

    @classmethod
    def make(cls, policy: str, num_blocks: int, bn: str, **args: Any) -> FreezeState:
        """Validate a policy and its arguments against a backbone of ``num_blocks`` blocks (LoRA's
        ``targets`` stay as given: `TransferModel.freeze` resolves them against the backbone)."""
        if not isinstance(policy, str) or policy not in POLICIES:
            raise ValueError(f"unknown freeze policy {policy!r}; valid policies: {', '.join(POLICIES)}")
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        allowed = POLICIES[policy]
        given = {k: v for k, v in args.items() if v is not None}
        extra = sorted(set(given) - set(allowed))
        if extra:
            takes = ", ".join(allowed) if allowed else "no arguments"
            raise ValueError(f"freeze policy {policy!r} takes {takes}; got unexpected {', '.join(extra)}")
        values = {**allowed, **given}
        if policy == "lora":
            return cls(policy=policy, bn=bn, adapters=check_adapters(values))
        if policy == "norm" and bn == "frozen_all":
            raise ValueError(
                "policy='norm' trains the norm layers, which bn='frozen_all' fixes; use bn='frozen'"
            )
        if policy == "last_n" and "n" not in given:
            raise ValueError(
                f"freeze policy 'last_n' needs n, the number of blocks to train (0..{num_blocks})"
            )
        for key, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{key} must be an int, got {value!r}")
        if "n" in values and not 0 <= values["n"] <= num_blocks:
            raise ValueError(
                f"n={values['n']} is out of range: this backbone has {num_blocks} blocks, "
                f"n must be in [0, {num_blocks}]"
            )
        for key in ("step", "every"):
            if key in values and values[key] < 1:
                raise ValueError(f"{key} must be >= 1, got {values[key]}")
        return cls(policy=policy, bn=bn, **values)

    @property
    def parameter_efficient(self) -> bool:
        """Whether the policy picks parameters inside blocks (``lora``, ``bitfit``, ``norm``)."""
        return self.policy in PEFT_POLICIES

    def num_trainable(self, num_blocks: int) -> int:
        """How many of the last blocks train at ``self.epoch`` (block policies only)."""
        if self.parameter_efficient:
            raise ValueError(
                f"freeze policy {self.policy!r} trains parameters inside blocks, not whole blocks"
            )
        if self.policy == "none":
            return num_blocks
        if self.policy == "all":
            return 0
        if self.policy == "last_n":
            return self._argument("n")
        schedule = self._argument("step") * (self.epoch // self._argument("every"))
        return min(num_blocks, self._argument("n") + schedule)

    def _argument(self, name: str) -> int:
        """The policy argument ``name``, which `make` sets for every policy that takes it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"freeze policy {self.policy!r} needs {name}; build the state with FreezeState.make"
            )
        return int(value)

    def keeps_eval(self, block_trains: bool, norm: bool) -> bool:
        """Whether a module of a block stays in eval mode through ``train()``.

        Frozen blocks stay in eval mode (their norm layers too unless ``bn="train"``); under
        ``bn="frozen_all"`` the norm layers of trainable blocks do as well. Under a parameter-efficient
        policy every norm layer keeps its statistics (the base stays as it was) unless ``bn="train"``.
        """
        if norm and self.parameter_efficient:
            return self.bn != "train"
        if norm:
            return self.bn == "frozen_all" or (self.bn == "frozen" and not block_trains)
        return not block_trains

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any], num_blocks: int) -> FreezeState:
        """What `to_dict` returned, validated against a backbone of ``num_blocks`` blocks."""
        state = dict(state)
        unknown = sorted(set(state) - {"policy", "n", "step", "every", "bn", "epoch", "adapters"})
        if unknown:
            raise ValueError(
                f"not a freeze state: unexpected keys {', '.join(unknown)}; "
                "pass what model.freeze_state() returned"
            )
        epoch = state.get("epoch", 0)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"freeze state epoch must be an int >= 0, got {epoch!r}")
        adapters = state.get("adapters")
        adapters = None if adapters is None else check_adapters(adapters)
        if adapters is not None and not adapters["targets"]:
            raise ValueError("a freeze state with LoRA adapters must name their layers (targets)")
        policy = state.get("policy", "none")
        args: dict[str, Any] = {k: state.get(k) for k in ("n", "step", "every")}
        if policy == "lora":
            if adapters is None:
                raise ValueError("freeze policy 'lora' needs its adapters' settings")
            args = dict(adapters)
        freeze = cls.make(policy, num_blocks, state.get("bn", "frozen"), **args)
        freeze.epoch, freeze.adapters = epoch, adapters
        return freeze


def is_norm(module: nn.Module) -> bool:
    """Normalisation layers with running statistics (every BatchNorm, SyncBatchNorm, timm's norm-act)."""
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


def block_modules(backbone: nn.Module, blocks: dict[str, list[str]]) -> dict[str, list[nn.Module]]:
    """The modules of each block: those whose parameters all lie in it, and parameter-free modules
    (dropout, drop-path, activations, affine-free norms) inside such a module.

    A parameter-free module that sits in no block's module (a ViT's ``pos_drop`` / ``patch_drop``
    between the stem and the first block) goes with the block registered just before it (the first
    block when none is), so it is off whenever the computation that feeds it is frozen."""
    owner = {p: b for b, ps in blocks.items() for p in ps}
    assigned: dict[str, str] = {}
    result: dict[str, list[nn.Module]] = {b: [] for b in blocks}
    last: str | None = None  # block of the latest module whose parameters all lie in one block
    pending: list[tuple[str, nn.Module]] = []  # loose parameter-free modules before any block
    for path, module in backbone.named_modules():
        names = [f"{path}.{n}" if path else n for n, _ in module.named_parameters()]
        if names:
            owners = {owner.get(n) for n in names}
            block = owners.pop() if len(owners) == 1 else None
            if block is not None:
                last = block
                for loose_path, loose in pending:
                    assigned[loose_path] = block
                    result[block].append(loose)
                pending = []
        else:
            block = assigned.get(path.rpartition(".")[0]) if path else None
            if block is None and path:
                block = last
                if block is None:
                    pending.append((path, module))
        if block is not None:
            assigned[path] = block
            result[block].append(module)
    return result


def param_groups(
    model: Any,
    lr: float,
    *,
    layer_decay: float | None = None,
    backbone_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer groups for a TransferModel: per block (frozen ones too), neck, head; norm and bias
    parameters, learned tokens and position embeddings without weight decay. See
    `TransferModel.param_groups`."""
    _check_rate("lr", lr, "> 0", lambda v: v > 0)
    if layer_decay is not None:
        _check_rate("layer_decay", layer_decay, "in (0, 1]", lambda v: 0.0 < v <= 1.0)
    _check_rate("backbone_lr_mult", backbone_lr_mult, ">= 0", lambda v: v >= 0)
    _check_rate("weight_decay", weight_decay, ">= 0", lambda v: v >= 0)
    named = dict(model.backbone.named_parameters())
    blocks = model.backbone.blocks
    units: list[tuple[str, list[tuple[str, nn.Parameter]], int | None]] = [
        (f"backbone.{b}", [(p, named[p]) for p in ps], i) for i, (b, ps) in enumerate(blocks.items())
    ]
    units += [("neck", list(model.neck.named_parameters()), None)]
    units += [("head", list(model.head.named_parameters()), None)]
    groups: list[dict[str, Any]] = []
    for name, params, index in units:
        scale = 1.0
        if index is not None:
            scale = backbone_lr_mult * (layer_decay ** (len(blocks) - index) if layer_decay else 1.0)
        no_decay = [p for n, p in params if _exempt_from_decay(n, p)]
        decay = [p for n, p in params if not _exempt_from_decay(n, p)]
        for suffix, ps, wd in (("", decay, weight_decay), ("/no_decay", no_decay, 0.0)):
            if ps:
                groups.append({"name": name + suffix, "params": ps, "lr": lr * scale, "weight_decay": wd})
    counted = [id(p) for g in groups for p in g["params"]]
    assert len(counted) == len(set(counted)) == len(list(model.parameters())), (
        "each parameter in exactly one group"
    )
    return groups


def _check_rate(name: str, value: Any, bound: str, within: Any) -> None:
    """Raise ValueError unless ``value`` is a finite real number (not a bool) that is ``within`` bounds."""
    real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not real or not within(value):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


# Learned embeddings and tokens (ViT, DeiT, Swin, ... in timm and torchvision), which weight decay would
# pull towards zero like the norm and bias parameters; timm's models list the same in no_weight_decay().
_NO_DECAY_NAMES = frozenset(
    {
        "cls_token",
        "class_token",
        "dist_token",
        "reg_token",
        "mask_token",
        "pos_embed",
        "pos_embedding",
        "absolute_pos_embed",
        "relative_position_bias_table",
    }
)


def _exempt_from_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights and biases (1-d), learned tokens and position embeddings get no weight decay."""
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES


class Table(str):
    """A plain-text table that a notebook shows as an HTML table.

    It stays a ``str`` (``print``, ``splitlines``, ``in`` work as before); its ``repr`` is the text
    itself, so a notebook cell or a REPL that ends with it shows the table rather than an escaped
    string (IPython's text display uses a class's own ``__repr__``), and ``_repr_html_`` gives
    notebooks the same rows as HTML.

    Examples:
        >>> table = model.freeze_summary()
        >>> isinstance(table, str), repr(table) == str(table)
        (True, True)
        >>> table._repr_html_()[:7]
        '<table>'
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __new__(cls, text: str, header: tuple[str, ...] = (), rows: Sequence[tuple[str, ...]] = ()) -> Table:
        table = super().__new__(cls, text)
        table.header, table.rows = header, tuple(rows)
        return table

    def __repr__(self) -> str:
        return str.__str__(self)

    def _repr_html_(self) -> str:
        def row(tag: str, cells: tuple[str, ...]) -> str:
            aligned = (f'<{tag} style="text-align: {"right" if i else "left"}">' for i in range(len(cells)))
            return "<tr>" + "".join(f"{a}{html.escape(c)}</{tag}>" for a, c in zip(aligned, cells)) + "</tr>"

        body = "".join(row("td", cells) for cells in self.rows)
        return f"<table><thead>{row('th', self.header)}</thead><tbody>{body}</tbody></table>"


def summary_table(rows: list[tuple[str, int, int, str]]) -> Table:
    """A `Table` of ``(block, params, trainable params, norm mode)`` rows with a total line; a row's
    trainable cell says ``yes``, ``no``, or how many of its parameters train."""
    header = ("block", "params", "trainable", "norm mode")
    body = [(b, f"{n:,}", "yes" if t == n else "no" if t == 0 else f"{t:,}", m) for b, n, t, m in rows]
    trainable = sum(t for _, _, t, _ in rows)
    total = sum(n for _, n, _, _ in rows)
    body.append(("total", f"{total:,}", f"{trainable:,}", ""))
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    text = "\n".join([fmt(header), line, *map(fmt, body[:-1]), line, fmt(body[-1])])
    return Table(text, header, body)
