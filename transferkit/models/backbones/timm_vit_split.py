"""Splitting a timm ViT's feature wrapper at a transformer block, for the feature cache.

timm reads a ViT's levels through ``forward_intermediates`` (its ``FeatureGetterNet`` wrapper), one call
that runs the patch embedding and every block, so it is no module sequence to cut. `vit_split` cuts
the same computation in two: the prefix runs the stem (patch embedding, class / register tokens,
position embeddings) and the blocks before the cut, the suffix the rest, and together they give what
``forward_intermediates`` gives. Between them travel the patch tokens as a map ``[N, C, H / p, W / p]``
(so the grid's shape needs no side channel), the prefix tokens ``[N, P, C]`` and the levels taken so far.

Only ``VisionTransformer`` and its subclasses that keep its ``forward_intermediates`` (ViT, DeiT,
DINOv2, ...) are split; others keep `split_error`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

__all__ = ["can_split_vit", "vit_split"]


def can_split_vit(body: Any) -> bool:
    """Whether ``body`` is a timm feature wrapper around a ViT whose block loop `vit_split` reproduces."""
    from timm.models.vision_transformer import VisionTransformer

    getter = all(hasattr(body, a) for a in ("model", "out_indices", "norm", "output_fmt"))
    if not getter or not isinstance(body.model, VisionTransformer):  # timm's FeatureGetterNet
        return False
    model = body.model
    same_loop = type(model).forward_intermediates is VisionTransformer.forward_intermediates
    fmt = getattr(body.output_fmt, "value", body.output_fmt)
    return same_loop and fmt == "NCHW" and not model.grad_checkpointing


def vit_split(body: Any, k: int, keep: set[int]) -> tuple[nn.Module, nn.Module]:
    """The two parts of ``body`` (`can_split_vit`) cut before transformer block ``k`` (0: after the stem).

    Args:
        body: The feature wrapper.
        k: Transformer blocks the prefix runs.
        keep: The levels (positions in the wrapper's ``out_indices``) the neck and head read; others are
            passed on as None.
    """
    return _VitPart(body, 0, k, keep, last=False), _VitPart(body, k, len(body.model.blocks), keep, last=True)


class _VitPart(nn.Module):
    """Blocks ``start .. end - 1`` of a timm ViT; the first part also runs the stem, the last one returns
    the levels as maps."""

    def __init__(self, body: Any, start: int, end: int, keep: set[int], *, last: bool) -> None:
        super().__init__()
        vit = body.model
        self.first, self.last = not last, last
        self.stem = nn.ModuleList([vit.patch_embed, vit.patch_drop, vit.norm_pre] if self.first else [])
        self.vit = [vit]  # in a list: the blocks are this part's modules, the rest is not
        self.blocks = nn.ModuleList(vit.blocks[start:end])
        self.norm = vit.norm if body.norm else None
        self.start, self.prefix = start, vit.num_prefix_tokens
        self.levels = {index: level for level, index in enumerate(body.out_indices)}
        self.keep = keep

    def forward(self, x: torch.Tensor, *state: torch.Tensor | None) -> tuple | list:
        if self.first:
            levels: list[torch.Tensor | None] = []
            vit = self.vit[0]
            height, width = vit.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
            x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        else:  # x: the patch tokens as a map; then the prefix tokens and the levels so far
            tokens, *levels = state
            height, width = x.shape[-2:]
            x = torch.cat([cast(torch.Tensor, tokens), x.flatten(2).transpose(1, 2)], dim=1)
        for i, block in enumerate(self.blocks, start=self.start):
            x = block(x)
            if i in self.levels:
                taken = self.levels[i] in self.keep
                levels.append(self._map(self.norm(x) if self.norm else x, height, width) if taken else None)
        if self.last:
            return levels
        return (self._map(x, height, width), x[:, : self.prefix], *levels)

    def _map(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Patch tokens ``[N, P + HW, C]`` -> ``[N, C, H, W]``."""
        return x[:, self.prefix :].reshape(len(x), height, width, -1).permute(0, 3, 1, 2).contiguous()
