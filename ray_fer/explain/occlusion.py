"""Occlusion sensitivity (Zeiler & Fergus 2014; Deep-Emotion's figure): hide a patch, see
how much each output drops.

A ``patch`` x ``patch`` square filled with ``fill`` slides over the image with ``stride``;
each occluded copy's outputs are compared with the intact image's. A pixel's value is the
mean drop over every patch position that covers it, so the map is in output units
(logits, or valence/arousal): positive where hiding the region lowers the output. The
default fill 0 is mid-gray after normalisation, what training's augmentation puts where
the image is shifted away. Occluded copies run in batches on the model's device.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_origins(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of patches along one side; the last patch always touches the border."""
    if not 1 <= patch <= size:
        raise ValueError(f"occlusion patch must be 1..{size} px, got {patch}")
    if stride < 1:
        raise ValueError(f"occlusion stride must be >= 1, got {stride}")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def patch_masks(height: int, width: int, patch: int, stride: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean masks (P, 1, H, W), one per patch position, True inside the patch."""
    masks = []
    for y in patch_origins(height, patch, stride):
        for x in patch_origins(width, patch, stride):
            mask = torch.zeros(1, height, width, dtype=torch.bool, device=device)
            mask[:, y:y + patch, x:x + patch] = True
            masks.append(mask)
    return torch.stack(masks)


@torch.no_grad()
def occlusion_sensitivity(model: nn.Module, images: torch.Tensor, *, patch: int = 8,
                          stride: int = 4, fill: float = 0.0, batch_size: int = 256
                          ) -> torch.Tensor:
    """Drop of every output under occlusion: (N, K, H, W) for images (N, C, H, W).

    ``model`` must be in eval mode (so that images in a batch do not affect each other);
    ``images`` live on the model's device, and so does the result.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, _, h, w = images.shape
    masks = patch_masks(h, w, patch, stride, images.device)
    weights = masks.flatten(1).float()  # (P, H*W)
    coverage = weights.sum(0)  # every pixel is covered at least once (see patch_origins)
    base = model(images).float()
    maps = []
    for i in range(n):
        total = torch.zeros(base.shape[1], h * w, device=images.device)
        for start in range(0, len(masks), batch_size):
            chunk = masks[start:start + batch_size]
            occluded = torch.where(chunk, torch.full_like(images[i], fill), images[i])
            drop = base[i] - model(occluded).float()  # (B, K)
            total += drop.T @ weights[start:start + batch_size]
        maps.append((total / coverage).reshape(-1, h, w))
    return torch.stack(maps)


def occlusion_map(model: nn.Module, images: torch.Tensor, outputs: torch.Tensor, *,
                  patch: int = 8, stride: int = 4, fill: float = 0.0,
                  batch_size: int = 256) -> torch.Tensor:
    """(N, H, W): the occlusion drop of output ``outputs[i]`` for image ``i``."""
    maps = occlusion_sensitivity(model, images, patch=patch, stride=stride, fill=fill,
                                 batch_size=batch_size)
    return maps[torch.arange(len(maps), device=maps.device), outputs.to(maps.device)]
