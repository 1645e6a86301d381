"""Parameter-efficient policies: LoRA adapters (through the optional ``peft`` package), BitFit, norm tuning.

Each keeps the pretrained backbone as it is and trains a small set of parameters beside the neck and head:

- ``lora``: low-rank adapters ``W + (alpha / r) * B @ A`` on chosen ``Linear`` / ``Conv2d`` layers (Hu et
  al. 2021), injected with ``peft.inject_adapter_in_model``; `merge_lora` folds them into the weights.
- ``bitfit``: every bias of the backbone (Ben Zaken et al. 2022).
- ``norm``: the affine parameters of the backbone's normalisation layers.

Injecting adapters renames the wrapped layers' parameters (``qkv.weight`` becomes ``qkv.base_layer.weight``)
and adds new ones; `add_lora` and `merge_lora` rebuild the backbone's ``blocks`` by parameter identity, so
that every parameter still belongs to exactly one block.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

__all__ = [
    "LORA_DEFAULTS",
    "PEFT_POLICIES",
    "add_lora",
    "check_adapters",
    "default_targets",
    "has_lora",
    "merge_lora",
    "resolve_targets",
    "trainable_names",
]

PEFT_POLICIES = ("lora", "bitfit", "norm")
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "targets": None, "dropout": 0.0}
INSTALL_HINT = "pip install 'transferkit[peft]' (or pip install peft)"
# A transformer block's attention and MLP projections, under the names timm and torchvision give them.
_TRANSFORMER_LINEARS = frozenset(
    {"qkv", "q", "k", "v", "q_proj", "k_proj", "v_proj", "fc1", "fc2", "in_proj", "out_proj"}
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _lora_layer_type() -> Any:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError as err:
        raise ImportError(
            f"freeze(policy='lora') needs the peft package, which is not installed: {INSTALL_HINT}"
        ) from err
    return LoraLayer


def has_lora(backbone: nn.Module) -> bool:
    """Whether ``backbone`` carries LoRA adapters (without importing peft when it has none)."""
    return any(".lora_" in name or name.startswith("lora_") for name, _ in backbone.named_parameters())


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's modules by the names they have without adapters (an adapted layer's ``base_layer``
    under its own name; the adapters' parts left out), so targets resolve the same with or without them."""
    return [
        (name.removesuffix(".base_layer"), m)
        for name, m in backbone.named_modules()
        if ".lora_" not in name and not hasattr(m, "base_layer")
    ]


def default_targets(backbone: nn.Module, blocks: dict[str, list[str]]) -> list[str]:
    """LoRA's default layers: a transformer's attention and MLP linears in every block; otherwise the
    ungrouped convolutions (and linears) of the top third of the blocks, stem excluded.

    Examples:
        >>> backbone = build_model("resnet18", num_classes=2, pretrained=False).backbone
        >>> default_targets(backbone, backbone.blocks)[:3]
        ['body.layer3.1.conv1', 'body.layer3.1.conv2', 'body.layer4.0.conv1']
    """
    linears = [
        name
        for name, m in _layers(backbone)
        if isinstance(m, nn.Linear) and name.rpartition(".")[2] in _TRANSFORMER_LINEARS
    ]
    if linears:
        return linears
    names = list(blocks)
    top = set(names[max(1, len(names) - math.ceil(len(names) / 3)) :])
    owner = {p: b for b, ps in blocks.items() for p in ps}
    weights = {id(p): n for n, p in backbone.named_parameters()}
    return [
        name
        for name, m in _layers(backbone)
        if _adaptable(m) and owner.get(weights.get(id(m.weight), "")) in top
    ]


def resolve_targets(backbone: nn.Module, targets: Any, blocks: dict[str, list[str]]) -> list[str]:
    """The full names of the layers ``targets`` picks: ``None`` (`default_targets`), or names and name
    endings (``["qkv", "fc1"]`` picks every ``*.qkv`` and ``*.fc1``), as peft matches them.

    Raises:
        ValueError: ``targets`` is not a list of names, or picks no ``Linear`` / ``Conv2d`` layer.
    """
    if targets is None:
        found = default_targets(backbone, blocks)
    else:
        wanted = [targets] if isinstance(targets, str) else targets
        if not isinstance(wanted, (list, tuple)) or not wanted or not all(isinstance(t, str) for t in wanted):
            raise ValueError(f"targets must be a list of layer names, e.g. ['qkv', 'fc1'], got {targets!r}")
        found = [
            name
            for name, m in _layers(backbone)
            if _adaptable(m) and any(name == t or name.endswith(f".{t}") for t in wanted)
        ]
    if not found:
        layers = [n for n, m in _layers(backbone) if _adaptable(m)]
        raise ValueError(
            f"LoRA targets {targets!r} pick no Linear or Conv2d layer (groups=1) of the backbone; "
            f"its layers include {', '.join(layers[-4:]) or 'none'}; pass their names or name endings"
        )
    return found


def check_adapters(adapters: Any) -> dict[str, Any]:
    """``{"r", "alpha", "dropout", "targets"}`` checked (a saved model's or a user's), as a new dict.

    Raises:
        ValueError: a missing or unexpected key, or a value out of range.
    """
    if not isinstance(adapters, dict) or set(adapters) != set(LORA_DEFAULTS):
        raise ValueError(
            f"LoRA settings must have exactly the keys {sorted(LORA_DEFAULTS)}, got {adapters!r}"
        )
    r, alpha, dropout, targets = (adapters[k] for k in ("r", "alpha", "dropout", "targets"))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the LoRA rank) must be an int >= 1, got {r!r}")
    real = (int, float)
    if isinstance(alpha, bool) or not isinstance(alpha, real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha (the LoRA scale numerator) must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if targets is not None and not (
        isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets)
    ):
        raise ValueError(f"targets must be None or a list of layer names, got {targets!r}")
    return {
        "r": r,
        "alpha": alpha,
        "dropout": float(dropout),
        "targets": None if targets is None else list(targets),
    }


def add_lora(backbone: nn.Module, adapters: dict[str, Any]) -> None:
    """Inject LoRA adapters on ``adapters["targets"]`` (full layer names) and rename ``backbone.blocks``.

    Raises:
        ImportError: peft is not installed (the message gives the install command).
    """
    _lora_layer_type()
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=adapters["r"],
        lora_alpha=adapters["alpha"],
        lora_dropout=adapters["dropout"],
        target_modules=list(adapters["targets"]),
        bias="none",
    )
    before = _blocks_by_id(backbone)
    inject_adapter_in_model(config, backbone)
    _rename_blocks(backbone, before)


def merge_lora(backbone: nn.Module) -> None:
    """Fold every LoRA adapter into its layer's weights and put the plain layer back in its place."""
    lora_layer = _lora_layer_type()
    before = _blocks_by_id(backbone)
    for name, module in list(backbone.named_modules()):
        if isinstance(module, lora_layer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, child, module.get_base_layer())
    _rename_blocks(backbone, before)


def _blocks_by_id(backbone: nn.Module) -> dict[int, str]:
    named = dict(backbone.named_parameters())
    blocks: dict[str, list[str]] = backbone.blocks  # type: ignore[assignment]
    return {id(named[p]): b for b, ps in blocks.items() for p in ps}


def _rename_blocks(backbone: nn.Module, block_of: dict[int, str]) -> None:
    """``backbone.blocks`` under the parameters' new names; adapters join the block of their layer."""
    order = list(backbone.blocks)  # type: ignore[arg-type]
    blocks: dict[str, list[str]] = {b: [] for b in order}
    modules = dict(backbone.named_modules())
    for name, param in backbone.named_parameters():
        block = block_of.get(id(param))
        if block is None:  # an adapter's: the block of the layer it adapts
            layer = modules[name.partition(".lora_")[0]] if ".lora_" in name else None
            base = getattr(layer, "base_layer", None)
            block = block_of.get(id(getattr(base, "weight", None)))
        if block is None:
            raise RuntimeError(f"{name} belongs to no backbone block after adding or merging adapters")
        blocks[block].append(name)
    backbone.blocks = blocks  # type: ignore[assignment]


def trainable_names(backbone: nn.Module, policy: str) -> set[str]:
    """The backbone parameters that ``policy`` (``lora``, ``bitfit`` or ``norm``) trains."""
    named = list(backbone.named_parameters())
    if policy == "lora":
        return {n for n, _ in named if ".lora_" in n}
    if policy == "bitfit":
        return {n for n, _ in named if n.rpartition(".")[2] == "bias"}
    norms = {name for name, m in backbone.named_modules() if isinstance(m, _NORMS) or _named_norm(m)}
    return {n for n, _ in named if n.rpartition(".")[0] in norms}


def _named_norm(module: nn.Module) -> bool:
    """A norm layer of a class torch does not know (timm's ``LayerNorm2d`` subclasses nn.LayerNorm; this
    catches the rest by name: ``FrozenBatchNorm2d`` has no parameters and is skipped by its owner)."""
    name = type(module).__name__
    return "Norm" in name and any(True for _ in module.parameters(recurse=False))
