import pytest
import torch
from torch import nn

from ray_fer.models.layers.cbam import ChannelGate, IdentityCBAM, SpatialGate


def _perturbed(module: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    return module.eval()


def test_identity_cbam_keeps_shape_and_is_the_identity_at_init():
    torch.manual_seed(0)
    module = IdentityCBAM(32)
    x = torch.randn(2, 32, 8, 8)
    for mode in (module.train(), module.eval()):
        out = mode(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_identity_cbam_adds_its_input_to_the_attention_bottleneck_branch():
    module = _perturbed(IdentityCBAM(32))
    x = torch.randn(2, 32, 8, 8)
    branch = module.bottleneck(module.spatial_gate(module.channel_gate(x)))
    assert branch.abs().mean() > 1e-2
    torch.testing.assert_close(module(x) - x, branch, rtol=1e-5, atol=1e-5)


def test_channel_gate_scales_each_channel_by_one_factor_in_0_1():
    gate = _perturbed(ChannelGate(32))
    x = torch.rand(2, 32, 6, 6) + 0.1
    scale = gate(x) / x
    torch.testing.assert_close(scale, scale[:, :, :1, :1].expand_as(scale))
    assert ((scale > 0) & (scale < 1)).all()
    assert scale[:, :, 0, 0].std() > 1e-3


def test_spatial_gate_scales_each_position_by_one_factor_in_0_1():
    gate = _perturbed(SpatialGate())
    x = torch.rand(2, 32, 6, 6) + 0.1
    scale = gate(x) / x
    torch.testing.assert_close(scale, scale[:, :1].expand_as(scale))
    assert ((scale > 0) & (scale < 1)).all()
    assert scale[:, 0].std() > 1e-3


@pytest.mark.parametrize("channels", [256, 2048])
def test_identity_cbam_parameter_count(channels):
    hidden, width = channels // 16, channels // 4
    channel_mlp = channels * hidden + hidden + hidden * channels + channels
    spatial_conv = 2 * 7 * 7 + 1
    convs = channels * width + 9 * width * width + width * channels
    bottleneck = convs + 2 * (2 * width + channels)  # BatchNorm scales and shifts
    module = IdentityCBAM(channels)
    assert sum(p.numel() for p in module.parameters()) == channel_mlp + spatial_conv + bottleneck
