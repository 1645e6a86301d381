"""Pretrained first convolutions for other input channel counts (grey, RGB + infrared, ...).

ImageNet weights expect 3 input channels. A model built with ``in_chans`` other than 3 still takes them:
the first convolution's kernel ``[out, 3, kh, kw]`` becomes ``[out, in_chans, kh, kw]``, so that the
pretrained filters respond to the new input as they did to RGB:

- one channel: the kernel is summed over its input channels. A grey image ``g`` through the summed
  kernel gives exactly what the RGB kernel gives on ``(g, g, g)``: the model sees the grey image as
  the pretrained model saw its grey copy in colour.
- more channels: the RGB kernel is repeated over the new channels (R, G, B, R, G, ...) and scaled by
  ``3 / in_chans``, so that an input whose channels all carry similar values keeps the activation scale
  the next layers were trained on.

torchvision weights go through `adapt_input_conv` here; timm backbones leave it to timm's loading
(``timm.models.adapt_input_conv``), which gives the same kernels (tests/test_input_channels.py).
"""

from __future__ import annotations

import torch

__all__ = ["adapt_input_conv"]


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first convolution's kernel for ``in_chans`` input channels, from one trained for others.

    Args:
        weight: Kernel ``[out, C, kh, kw]`` (C is 3 for ImageNet weights).
        in_chans: The input channels wanted.

    Returns:
        ``weight`` itself when ``C == in_chans``; for one channel the sum over ``C``; otherwise the kernel
        repeated cyclically over ``in_chans`` channels and scaled by ``C / in_chans``. The dtype stays.

    Raises:
        ValueError: ``weight`` is not a 4-d kernel, or ``in_chans < 1``.

    Examples:
        >>> w = torch.randn(32, 3, 3, 3)
        >>> adapt_input_conv(w, 1).shape, adapt_input_conv(w, 4).shape
        (torch.Size([32, 1, 3, 3]), torch.Size([32, 4, 3, 3]))
        >>> torch.allclose(adapt_input_conv(w, 1)[:, 0], w.sum(1))
        True
    """
    if weight.ndim != 4:
        raise ValueError(
            f"a first convolution's kernel is [out, in, kh, kw]; got shape {tuple(weight.shape)}"
        )
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    channels = weight.shape[1]
    if channels == in_chans:
        return weight
    original = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_chans // channels)  # ceil
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (channels / in_chans)
    return adapted.to(original)
