import os

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from ray_fer.methods.registry import build_model
from ray_fer.models.layers.pretrained import PretrainedWeightsUnavailable

DENSE_MODELS = {
    "mobilenet_v2_dense": 1280,
    "efficientnet_b0_dense": 1280,
    "efficientnet_b2_dense": 1408,
}


@pytest.mark.parametrize(("name", "channels"), DENSE_MODELS.items())
def test_backbone_features_feed_two_dense_layers(name, channels):
    model = build_model(name, num_classes=5, hidden=64, dropout=0.1)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(channels, 64), (64, 5)]
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.1, 0.1]


@pytest.mark.parametrize(
    ("image_size", "stem_stride", "expected_stride"),
    [(48, None, 1), (95, None, 1), (96, None, 2), (224, None, 2), (48, 2, 2)],
)
def test_stem_stride_defaults_to_1_below_96_pixels(image_size, stem_stride, expected_stride):
    model = build_model(
        "mobilenet_v2_dense", num_classes=7, image_size=image_size, stem_stride=stem_stride
    )
    assert model.features[0][0].stride == (expected_stride, expected_stride)


def test_48_pixel_faces_reach_the_head_as_3x3_maps():
    model = build_model("efficientnet_b0_dense", num_classes=7).eval()
    with torch.no_grad():
        assert model.features(torch.rand(1, 1, 48, 48)).shape == (1, 1280, 3, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_stem_takes_the_input_channels(channels):
    model = build_model("efficientnet_b2_dense", num_classes=7, in_channels=channels)
    assert model.features[0][0].in_channels == channels


@pytest.mark.parametrize("channels", [1, 3])
def test_imagenet_weights_load_from_the_hub_cache(offline_torch_hub, channels):
    saved = tvm.mobilenet_v2().state_dict()
    weights = tvm.MobileNet_V2_Weights.DEFAULT
    torch.save(saved, offline_torch_hub / os.path.basename(weights.url))
    model = build_model(
        "mobilenet_v2_dense", num_classes=7, in_channels=channels, pretrained="imagenet"
    )
    stem = saved["features.0.0.weight"]
    expected_stem = stem.sum(dim=1, keepdim=True) if channels == 1 else stem
    torch.testing.assert_close(model.features[0][0].weight, expected_stem)
    inner = model.features[5].conv[1][0].weight
    torch.testing.assert_close(inner, saved["features.5.conv.1.0.weight"])


def test_pretrained_option_reaches_the_loader_and_fails_clearly_offline(offline_torch_hub):
    with pytest.raises(PretrainedWeightsUnavailable, match="no network access"):
        build_model("efficientnet_b0_dense", num_classes=7, pretrained="imagenet")


def test_unknown_pretrained_value_is_rejected():
    with pytest.raises(ValueError, match="pretrained"):
        build_model("mobilenet_v2_dense", num_classes=7, pretrained="imagenet21k")
