"""Faces converted to what a network takes: its channels and input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_images(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Normalised (N, C, H, W) faces as the model wants them: gray↔RGB, resized to ``size``.

    Shards store one size (e.g. FER2013's 48 px gray); a ResNet at 224 px RGB reads the
    same shards, converted on the worker's device rather than stored twice, and an
    ensemble converts its input for each member the same way.
    """
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images.expand(
            -1, channels, -1, -1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=images.shape[-1] > size)
    return images
