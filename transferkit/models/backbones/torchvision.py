"""Every torchvision classification model as a multi-scale feature extractor.

The levels are found by building the model on the meta device and watching which modules end each
stride; torchvision's FX feature extraction then returns exactly those outputs, so the classifier
is never run and holds no parameters.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torchvision.models as tvm
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor

from ..features import FeatureInfo
from ..weights import fetch_url, is_weights_path, load_matching, read_state_dict
from .base import Backbone, canonical_kwargs, check_blocks, check_out_indices, split_error, structural_blocks
from .torchvision_levels import CLASSIFIER, dilated_kwargs, layout, level_plan, weights_enum

__all__ = ["TorchvisionBackbone", "torchvision_names"]

# Models trained with their own input transform (torchvision sets it whenever it loads weights).
_TRANSFORM_INPUT = ("googlenet", "inception_v3")


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification model name."""
    return tuple(tvm.list_models(module=tvm))


def _resolve_tag(name: str, tag: str) -> Any:
    enum = weights_enum(name)
    key = tag.split(".")[-1]
    if key == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ValueError(f"unknown weights tag {tag!r} for torchvision/{name}; valid tags: {valid}") from None


def _weights_source(name: str, pretrained: bool | str) -> tuple[str | os.PathLike[str] | None, Any]:
    """``(weights file, torchvision weights enum member)`` for ``pretrained``: at most one of them is set,
    neither for random initialisation."""
    if is_weights_path(pretrained):
        return pretrained, None
    if pretrained is False:
        return None, None
    return None, _resolve_tag(name, "DEFAULT" if pretrained is True else pretrained)


def _data_config(weights: Any, in_chans: int) -> dict[str, Any]:
    tf = weights.transforms()
    crop, resize = tf.crop_size[0], tf.resize_size[0]
    return {
        "input_size": (in_chans, crop, crop),
        "mean": tuple(tf.mean),
        "std": tuple(tf.std),
        "interpolation": tf.interpolation.value,
        "crop_pct": round(crop / resize, 4),
    }


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution (the one that reads the image) and its path."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return path, module
    raise ValueError("no Conv2d found to adapt in_chans")


class TorchvisionBackbone(Backbone):
    """A torchvision classification model returning its feature maps, fine to coarse.

    Args:
        name: A torchvision classification model name, e.g. ``"resnet18"``.
        pretrained: ``True`` (the default weights), ``False``, a weights tag (``"IMAGENET1K_V2"``) or a
            path to a file holding the torchvision model's state_dict.
        in_chans: Input channels; other than 3 replaces the first convolution, whose pretrained kernel
            is adapted (`transferkit.models.input_channels.adapt_input_conv`).
        out_indices: Which levels to return (default: all).
        output_stride: The coarsest level's stride, 8, 16 or 32 (default: the model's own). Below the
            native 32, the last stages dilate instead of striding (``replace_stride_with_dilation``; the
            Bottleneck ResNets only) and keep their levels, which then share strides.
        **kwargs: Passed to the torchvision model builder.

    Examples:
        >>> bb = TorchvisionBackbone("resnet18", pretrained=False)
        >>> [f.shape for f in bb(torch.randn(2, 3, 64, 64))][-1]
        torch.Size([2, 512, 2, 2])
        >>> bb.feature_info.reductions
        (2, 4, 8, 16, 32)
        >>> TorchvisionBackbone("resnet50", pretrained=False, output_stride=8).feature_info.reductions
        (2, 4, 8, 8, 8)
    """

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool | str = True,
        in_chans: int = 3,
        out_indices: tuple[int, ...] | list[int] | None = None,
        output_stride: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if name not in torchvision_names():
            raise ValueError(f"{name!r} is not a torchvision classification model")
        self.name = name
        if name in _TRANSFORM_INPUT:
            kwargs.setdefault("transform_input", pretrained is not False)
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", False)
        kwargs = canonical_kwargs(kwargs)
        build_kwargs = dilated_kwargs(name, kwargs, output_stride)
        levels = level_plan(name, tuple(build_kwargs.items()))
        indices = check_out_indices(out_indices, len(levels))
        levels = tuple(levels[i] for i in indices)
        weights_file, weights = _weights_source(name, pretrained)
        meta = weights or weights_enum(name).DEFAULT
        self.data_config = _data_config(meta, in_chans)
        self.min_input_size = int(meta.meta.get("min_size", (1, 1))[0])
        self.layout = layout(name)
        self.fixed_input_size = self.data_config["input_size"][-1] if self.layout == "tokens" else None
        self.feature_info = FeatureInfo(
            channels=tuple(c for _, c, _ in levels), reductions=tuple(r for _, _, r in levels)
        )
        self.config = {
            "pretrained": pretrained,
            "in_chans": in_chans,
            "out_indices": indices,
            "output_stride": output_stride,
            **kwargs,
        }

        model = tvm.get_model(name, weights=None, **build_kwargs)
        if in_chans != 3:
            path, conv = _first_conv(model)
            parent, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent), attr, _with_in_chans(conv, in_chans))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # train/eval graphs differ for dropout-free models: expected
            self.body = create_feature_extractor(
                model, return_nodes={p: str(i) for i, (p, _, _) in enumerate(levels)}
            )
        if weights is not None:
            weights_file = fetch_url(weights.url, model=f"torchvision/{name}")
        if weights_file is not None:
            source = f"weights for torchvision/{name} ({weights_file})"
            _load_body(self.body, model, weights_file, source=source)
        blocks = structural_blocks(model, skip=CLASSIFIER)
        kept = {n for n, _ in self.body.named_parameters()}
        self.blocks = {b: [f"body.{p}" for p in ps if p in kept] for b, ps in blocks.items()}
        self.blocks = {b: ps for b, ps in self.blocks.items() if ps}
        check_blocks(self.blocks, self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[N, C_i, H / r_i, W / r_i]``, fine to coarse."""
        self.check_input(x)
        return [_to_map(f, self.layout) for f in self.body(x).values()]

    def split(self, k: int, levels: set[int] | None = None) -> tuple[nn.Module, nn.Module]:
        """Split where block ``k`` starts: ``prefix(x) -> state``, ``suffix(*state) -> features``.

        The prefix holds no parameter of blocks ``k`` and later; ``suffix(*prefix(x))`` equals
        ``self(x)``. The state is every value the rest of the network reads from the prefix (the
        boundary activation and the finer levels already computed).

        Args:
            k: The first block of the suffix (``len(blocks)``: everything in the prefix).
            levels: The feature levels the caller reads; the others come back as None, so the
                state need not carry them.

        Examples:
            >>> bb = TorchvisionBackbone("resnet18", pretrained=False)
            >>> prefix, suffix = bb.split(7)  # blocks 7, 8 (layer4) on one side
            >>> [s.shape[1] for s in prefix(torch.randn(1, 3, 64, 64))]
            [64, 64, 128, 256]
        """
        if str(self.body.train_graph) != str(self.body.eval_graph):
            raise split_error(f"torchvision/{self.name}", "its graph differs between train and eval")
        owner = {p: i for i, ps in enumerate(self.blocks.values()) for p in ps}
        body = self.body

        def block_of(node: fx.Node) -> int | None:
            if node.op == "call_module":
                names = [
                    f"body.{node.target}.{n}" for n, _ in body.get_submodule(node.target).named_parameters()
                ]
            elif node.op == "get_attr":
                names = [f"body.{node.target}"]
            else:
                return None
            found = [owner[n] for n in names if n in owner]
            return max(found) if found else None

        def trainable(node: fx.Node) -> bool:
            block = block_of(node)
            return block is not None and block >= k

        keep = {str(i) for i in range(len(self.feature_info))} if levels is None else {str(i) for i in levels}
        prefix, suffix = _split_graph(body, body.train_graph, trainable, keep)
        return prefix, _Suffix(suffix, self.layout)


def _load_body(body: nn.Module, model: nn.Module, path: str | os.PathLike[str], *, source: str) -> None:
    """Load a file holding the state_dict of a torchvision model into ``body``, its feature extractor.

    What the classifier is comes from the model itself, as timm's feature wrappers have it: a key is
    skipped, whatever its shape, when ``body`` does not run it. That is a key of ``model`` missing from
    ``body`` (the classifier, levels left out by ``out_indices``), or any key under a top-level module
    ``body`` does not hold (a classifier fine-tuned to another structure, the auxiliary heads that
    googlenet and inception_v3 are built here without). Every other key must fit ``body`` exactly.
    """
    used = set(body.state_dict())
    used_modules = {k.partition(".")[0] for k in used}
    known = set(model.state_dict())

    def rename(key: str) -> str | None:
        if key in used or (key not in known and key.partition(".")[0] in used_modules):
            return key  # loaded, or reported as unexpected
        return None

    first = f"{_first_conv(model)[0]}.weight"  # a file for 3 channels fits another in_chans, adapted
    load_matching(body, read_state_dict(path), source=source, rename=rename, input_convs=(first,))


def _to_map(f: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "nchw":
        return f
    if layout == "nhwc":
        return f.permute(0, 3, 1, 2)
    side = math.isqrt(f.shape[1] - 1)  # [N, 1 + h * w, C] with a class token; torchvision's ViTs are square
    return f[:, 1:].transpose(1, 2).reshape(f.shape[0], -1, side, side)


def _to_maps(outputs: dict[str, torch.Tensor | None], layout: str) -> list[torch.Tensor | None]:
    return [None if f is None else _to_map(f, layout) for f in outputs.values()]


def _split_graph(
    root: nn.Module, graph: fx.Graph, trainable: Callable[[fx.Node], bool], keep: set[str]
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Cut ``graph`` before its first trainable node into two graph modules sharing ``root``'s weights.

    Outputs whose key is not in ``keep`` become None.
    """
    nodes = list(graph.nodes)
    output = nodes[-1]
    returned = {k: v for k, v in output.args[0].items() if k in keep}
    cut = next((i for i, n in enumerate(nodes) if trainable(n) or n.op == "output"), len(nodes) - 1)
    head, tail = nodes[:cut], nodes[cut:-1]
    inside = set(head)

    def read_later(node: fx.Node) -> bool:
        users = [u for u in node.users if u is not output] + [output] * (node in returned.values())
        return any(u not in inside for u in users)

    state = [n for n in head if read_later(n)]

    first = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in head:
        env[n] = first.node_copy(n, lambda a: env[a])
    first.output(tuple(env[n] for n in state))

    second, env = fx.Graph(), {}
    for n in state:
        env[n] = second.placeholder(n.name)
    for n in tail:
        env[n] = second.node_copy(n, lambda a: env[a])
    second.output({k: env[returned[k]] if k in returned else None for k in output.args[0]})
    return fx.GraphModule(root, first), fx.GraphModule(root, second)


class _Suffix(nn.Module):
    def __init__(self, graph: fx.GraphModule, layout: str) -> None:
        super().__init__()
        self.graph_module = graph
        self.layout = layout

    def forward(self, *state: torch.Tensor) -> list[torch.Tensor | None]:
        return _to_maps(self.graph_module(*state), self.layout)


def _with_in_chans(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_chans,
        conv.out_channels,
        _pair(conv.kernel_size),
        _pair(conv.stride),
        conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
        _pair(conv.dilation),
        conv.groups,
        conv.bias is not None,
    )


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's ``(height, width)`` size attribute as the pair that Conv2d takes."""
    height, width = size
    return height, width
