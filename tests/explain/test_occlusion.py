"""Occlusion sensitivity: unseen regions score zero, batching is exact, patches cover all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ray_fer.explain.occlusion import (
    occlusion_map,
    occlusion_sensitivity,
    patch_masks,
    patch_origins,
)


class LeftHalfOnly(nn.Module):
    """The trained model shown only the left half of each image (the right half zeroed)."""

    def __init__(self, model: nn.Module, width: int) -> None:
        super().__init__()
        self.model = model
        self.half = width // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x[..., :self.half], torch.zeros_like(x[..., self.half:])],
                                    -1))


def test_occluding_what_the_model_cannot_see_leaves_every_score_unchanged(classifier, images):
    blind = LeftHalfOnly(classifier.model, 48).eval()
    maps = occlusion_sensitivity(blind, images, patch=8, stride=4)
    assert maps.shape == (6, 7, 48, 48)
    # Patches start at 0, 4, ..., 40; a pixel at x >= 31 is covered only by patches
    # starting at x >= 24, all inside the hidden half: no output may move beyond float32
    # rounding (CPU kernels round a row differently by its position in a batch, ~1e-8).
    assert maps[..., 31:].abs().amax() < 1e-6
    assert maps[..., :24].abs().amax() > 1e-3


def test_batch_size_does_not_change_the_maps(classifier, images):
    small = occlusion_sensitivity(classifier.model, images[:2], patch=6, stride=5, batch_size=7)
    large = occlusion_sensitivity(classifier.model, images[:2], patch=6, stride=5,
                                  batch_size=1000)
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-5)


def test_occlusion_map_picks_each_images_target(classifier, images):
    outputs = torch.tensor([0, 3, 6, 1, 2, 5])
    maps = occlusion_map(classifier.model, images, outputs, patch=12, stride=12)
    full = occlusion_sensitivity(classifier.model, images, patch=12, stride=12)
    torch.testing.assert_close(maps, full[torch.arange(6), outputs])


def test_patches_reach_the_border_and_cover_every_pixel():
    assert patch_origins(48, 8, 5) == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert patch_origins(48, 10, 8) == [0, 8, 16, 24, 32, 38]
    masks = patch_masks(48, 40, 10, 8)
    assert masks.shape == (6 * 5, 1, 48, 40)
    assert masks.sum(0).min() >= 1


@pytest.mark.parametrize(("patch", "stride"), [(0, 4), (49, 4), (8, 0)])
def test_invalid_patch_or_stride_is_refused(patch, stride):
    with pytest.raises(ValueError, match="patch|stride"):
        patch_origins(48, patch, stride)
