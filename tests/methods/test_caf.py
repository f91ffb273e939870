"""The CAF networks: encoder choices, regressor range, critic presence."""

from __future__ import annotations

import pytest
import torch

from ray_fer.methods.caf.model import CafModel, caf, caf_baseline


@pytest.mark.parametrize(("encoder", "channels", "size", "features"),
                         [("resnet18", 3, 64, 512), ("small_cnn", 1, 48, 256)])
def test_encoder_features_and_va_output_in_unit_range(encoder, channels, size, features):
    model = CafModel(channels, encoder=encoder).eval()
    x = torch.randn(3, channels, size, size) * 10
    with torch.no_grad():
        z = model.encoder(x)
        out = model(x)
    assert z.shape == (3, features) and model.feature_dim == features
    assert out.shape == (3, 2)
    assert out.abs().max() <= 1.0
    assert torch.equal(out, model.regressor(z))  # inference = encoder + regressor only
    assert model.critic(z).shape == (3, 1)


def test_factory_picks_encoder_by_image_size_and_baseline_has_no_critic():
    small = caf(num_classes=7, in_channels=1, image_size=48)
    large = caf(num_classes=7, in_channels=3, image_size=64, critic_dim=16)
    assert isinstance(small.encoder, torch.nn.Sequential)
    assert large.critic(torch.zeros(2, 512)).shape == (2, 16)
    baseline = caf_baseline(num_classes=7, in_channels=1, image_size=48)
    assert baseline.baseline and baseline.critic is None
    assert not small.baseline
    assert [n for n, _ in baseline.named_parameters()] == [
        n for n, _ in small.named_parameters() if not n.startswith("critic.")]


def test_invalid_encoder_and_pretrained_small_cnn_fail_clearly():
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        CafModel(1, encoder="vgg")
    with pytest.raises(ValueError, match="small_cnn encoder has no pretrained weights"):
        CafModel(1, encoder="small_cnn", pretrained="imagenet")
