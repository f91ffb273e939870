import pytest
import torch
from torch import nn

from ray_fer.methods.deep_emotion import DeepEmotion
from ray_fer.methods.registry import build_model

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_reference_layout_at_48_pixels():
    model = build_model("deep_emotion", num_classes=7)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 10, (3, 3)),
        (10, 10, (3, 3)),
        (10, 10, (3, 3)),
        (10, 10, (3, 3)),
    ]
    assert [(fc.in_features, fc.out_features) for fc in _linears(model)] == [
        (640, 32),
        (32, 6),
        (810, 50),
        (50, 7),
    ]
    # omarsayed7/Deep-Emotion's network has exactly this many parameters.
    assert sum(p.numel() for p in model.parameters()) == 66_877


def test_flattened_sizes_follow_the_image_size():
    model = build_model("deep_emotion", num_classes=3, in_channels=3, image_size=64)
    # features 64-62-60-30-28-26-13, localization 64-58-29-25-12
    assert [fc.in_features for fc in _linears(model)] == [10 * 12 * 12, 32, 10 * 13 * 13, 50]
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)


def test_too_small_images_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        DeepEmotion(7, 1, 16)


@pytest.mark.parametrize("name", ["deep_emotion", "deep_emotion_wide"])
@pytest.mark.parametrize("channels", [1, 3])
def test_stn_is_the_identity_warp_at_init(name, channels):
    model = build_model(name, num_classes=7, in_channels=channels)
    x = torch.rand(2, channels, 48, 48)
    torch.testing.assert_close(model.theta(x), IDENTITY.expand(2, 2, 3))
    torch.testing.assert_close(model.stn(x), x, rtol=0, atol=1e-5)


def test_stn_warps_by_the_predicted_theta():
    model = build_model("deep_emotion", num_classes=7)
    shift = 3
    with torch.no_grad():
        # x_source = x_target + 2*shift/W in normalised coordinates: a shift of 3 pixels.
        model.localization[-1].bias.copy_(torch.tensor([1.0, 0.0, 2 * shift / 48, 0.0, 1.0, 0.0]))
    x = torch.rand(2, 1, 48, 48)
    warped = model.stn(x)
    torch.testing.assert_close(warped[..., : 48 - shift], x[..., shift:], rtol=0, atol=1e-5)
    assert warped[..., 48 - shift :].abs().max() == 0


def test_localization_network_learns_once_theta_head_moves():
    torch.manual_seed(0)
    model = build_model("deep_emotion", num_classes=7)
    first_loc_conv = model.localization[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    grads = []
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append(first_loc_conv.weight.grad.abs().sum().item())
        optimizer.step()
    # theta's head starts at zero weights, so no gradient passes it at first; after one
    # step it does, and the whole localization network trains.
    assert grads[0] == 0
    assert grads[1] > 0
    assert model.features[0].weight.grad.abs().sum() > 0


def test_wide_variant_is_wider_with_batchnorm_after_every_conv():
    model = build_model("deep_emotion_wide", num_classes=7, width=16, hidden=32)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 4
    assert [(fc.in_features, fc.out_features) for fc in _linears(model)][2:] == [
        (32 * 9 * 9, 32),
        (32, 7),
    ]
    reference = build_model("deep_emotion", num_classes=7)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in reference.features) == 1


def test_evaluation_is_deterministic_and_dropout_configurable():
    model = build_model("deep_emotion", num_classes=7, dropout=0.3).eval()
    assert model.classifier[0].p == 0.3
    x = torch.rand(2, 1, 48, 48)
    assert torch.equal(model(x), model(x))


def test_compiles_with_static_shapes():
    model = build_model("deep_emotion", num_classes=7).eval()
    x = torch.rand(2, 1, 48, 48)
    compiled = torch.compile(model, backend="eager", dynamic=False)
    torch.testing.assert_close(compiled(x), model(x))
