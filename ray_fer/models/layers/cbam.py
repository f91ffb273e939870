"""Identity-CBAM (Oh, Kim, Kim, Gwak): CBAM's gates, a bottleneck block and a skip connection.

Their paper ("Face Emotion Recognition using ResNet with Identity-CBAM") describes it in
this order: the channel attention module selects the important feature channels, the
spatial attention module then weights the important positions, a bottleneck residual
block added to CBAM learns from those emphasised features with few parameters, and a
skip connection adds the module's input back (against vanishing/exploding gradients,
"giving attention to the input")::

    out = x + bottleneck(spatial_gate(channel_gate(x)))

The gates follow CBAM (Woo et al. 2018): the channel gate passes the average- and
max-pooled channel descriptors through one shared MLP (reduction ``r``), sums them and
applies a sigmoid; the spatial gate stacks the channel-wise mean and max, applies a 7x7
convolution and a sigmoid. The bottleneck is ResNet's: 1x1 reduce to C/4, 3x3, 1x1
expand back to C, each followed by BatchNorm (ReLU after the first two).

The last BatchNorm's scale starts at zero, so a fresh module is the identity: inserting
it into a (pretrained or plain) ResNet leaves that network's function unchanged at
initialisation, and training grows the attention branch from there.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelGate(nn.Module):
    """x scaled per channel by sigmoid(MLP(avgpool x) + MLP(maxpool x))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        # 1x1 convolutions on the (N, C, 1, 1) descriptors: an MLP that keeps the layout.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialGate(nn.Module):
    """x scaled per position by sigmoid(conv7x7([mean_c x, max_c x]))."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


def bottleneck_branch(channels: int, reduction: int = 4) -> nn.Sequential:
    """ResNet's bottleneck residual branch: 1x1 reduce, 3x3, 1x1 expand, BatchNorm after each."""
    width = max(channels // reduction, 1)
    return nn.Sequential(
        nn.Conv2d(channels, width, kernel_size=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
    )


class IdentityCBAM(nn.Module):
    """``x + bottleneck(spatial_gate(channel_gate(x)))``; the identity at initialisation."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate()
        self.bottleneck = bottleneck_branch(channels)
        for layer in self.bottleneck:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bottleneck[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bottleneck(self.spatial_gate(self.channel_gate(x)))
