"""Adapting a backbone's first convolution to the input's channels and size."""

from __future__ import annotations

import torch
from torch import nn


def adapt_stem_conv(
    conv: nn.Conv2d, in_channels: int, *, pretrained: bool, stride: int | None = None
) -> nn.Conv2d:
    """``conv`` rebuilt for ``in_channels`` inputs (1 or 3) and, optionally, a new stride.

    With pretrained RGB weights, a 1-channel stem gets the *sum* of the three RGB kernels:
    on a gray image it then computes exactly what the RGB stem computes on that image
    repeated three times, without the 3x memory and bandwidth of repeating it. From
    scratch, a 1-channel stem is freshly initialised (Kaiming normal, fan-out, as
    torchvision initialises these backbones). Changing the stride keeps the weights.
    Returns ``conv`` itself when nothing changes.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    new_stride = conv.stride if stride is None else (stride, stride)
    if in_channels == conv.in_channels and new_stride == conv.stride:
        return conv
    adapted = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=new_stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        if in_channels == conv.in_channels:
            adapted.weight.copy_(conv.weight)
        elif pretrained:
            adapted.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(adapted.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            if in_channels == conv.in_channels or pretrained:
                adapted.bias.copy_(conv.bias)
            else:
                nn.init.zeros_(adapted.bias)
    return adapted
