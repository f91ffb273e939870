import pytest
import torch
from torch import nn

from ray_fer.methods.registry import build_model
from ray_fer.methods.vgg import VGGBN


def test_eight_batchnormed_convs_in_four_pooled_stages():
    model = build_model("vgg_bn", num_classes=7)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4


@pytest.mark.parametrize("channels", [1, 3])
def test_48_pixel_faces_reach_the_head_as_3x3_maps(channels):
    model = build_model("vgg_bn", num_classes=5, in_channels=channels, hidden=64).eval()
    x = torch.rand(2, channels, 48, 48)
    assert model.features(x).shape == (2, 512, 3, 3)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [
        (512 * 9, 64),
        (64, 64),
        (64, 5),
    ]
    assert model(x).shape == (2, 5)


def test_dropout_is_configurable():
    model = build_model("vgg_bn", num_classes=7, dropout=0.2)
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.2, 0.2]


def test_too_small_images_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        VGGBN(7, 1, 8)
