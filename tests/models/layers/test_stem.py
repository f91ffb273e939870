import pytest
import torch
from torch import nn

from ray_fer.models.layers.stem import adapt_stem_conv


def _rgb_stem() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False)


def test_pretrained_gray_stem_equals_rgb_stem_on_repeated_gray():
    rgb = _rgb_stem()
    gray = adapt_stem_conv(rgb, 1, pretrained=True)
    image = torch.rand(2, 1, 16, 16)
    assert gray.in_channels == 1
    torch.testing.assert_close(gray(image), rgb(image.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)


def test_scratch_gray_stem_is_fresh_with_same_geometry():
    rgb = _rgb_stem()
    gray = adapt_stem_conv(rgb, 1, pretrained=False)
    assert gray.weight.shape == (8, 1, 3, 3)
    assert (gray.stride, gray.padding, gray.kernel_size) == (rgb.stride, rgb.padding, (3, 3))
    assert not torch.allclose(gray.weight, rgb.weight.sum(dim=1, keepdim=True))


def test_stride_change_keeps_weights():
    rgb = _rgb_stem()
    strided = adapt_stem_conv(rgb, 3, pretrained=True, stride=1)
    assert strided.stride == (1, 1)
    assert torch.equal(strided.weight, rgb.weight)
    assert strided(torch.rand(1, 3, 16, 16)).shape == (1, 8, 16, 16)


def test_unchanged_stem_is_returned_as_is():
    rgb = _rgb_stem()
    assert adapt_stem_conv(rgb, 3, pretrained=False, stride=2) is rgb


def test_other_channel_counts_are_rejected():
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        adapt_stem_conv(_rgb_stem(), 2, pretrained=False)
