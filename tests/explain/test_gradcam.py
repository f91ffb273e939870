"""Grad-CAM: input-sized maps normalised to [0, 1], default layers for every family, V/A."""

from __future__ import annotations

import pytest
import torch

from ray_fer.explain.gradcam import default_layer, find_layer, grad_cam
from ray_fer.models.registry import build_model, model_defaults, model_names


def _check_unit_maps(maps: torch.Tensor, n: int, size: int) -> None:
    assert maps.shape == (n, size, size)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps.min() >= 0
    peaks = maps.flatten(1).amax(1)
    # Each map is divided by its own maximum; a map with nothing positive stays zero.
    assert all(p == pytest.approx(1.0) or p == 0 for p in peaks.tolist())
    assert (peaks == 1).any()


def test_gradcam_maps_have_the_input_shape_and_a_unit_peak(classifier, images):
    layer = default_layer(classifier.model, "deep_emotion")
    assert layer == "features.9"  # the last ReLU, before the final pooling
    maps = grad_cam(classifier.model, images, torch.arange(6), layer)
    _check_unit_maps(maps, 6, 48)
    assert not torch.equal(maps[0], maps[1])


def test_gradcam_of_a_va_model_for_valence_and_arousal(va_model, images):
    layer = default_layer(va_model.model, "caf")
    for output in (0, 1):
        maps = grad_cam(va_model.model, images, torch.full((6,), output), layer)
        assert maps.shape == (6, 48, 48) and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("name", ["vgg_bn", "mobilenet_v2_dense", "efficientnet_b0_dense",
                                  "resnet50_icbam", "deep_emotion_wide", "caf"])
def test_every_model_family_has_a_default_layer_that_works(name):
    torch.manual_seed(0)
    defaults = model_defaults(name)
    model = build_model(name, num_classes=7, image_size=48, in_channels=1).eval()
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    maps = grad_cam(model, x, torch.tensor([1, 0]), default_layer(model, defaults.family))
    assert maps.shape == (2, 48, 48) and maps.min() >= 0 and maps.max() <= 1


def test_families_without_a_default_and_unknown_layers_are_named():
    families = {model_defaults(n).family for n in model_names()}
    assert families - {"face_ae", "ensemble"} <= {"deep_emotion", "vgg", "dense_head", "resnet",
                                                 "caf"}
    model = build_model("deep_emotion", num_classes=3)
    with pytest.raises(ValueError, match="--layer"):
        default_layer(model, "face_ae")
    with pytest.raises(ValueError, match="no layer 'features.99'.*localization"):
        find_layer(model, "features.99")
    with pytest.raises(ValueError, match="does not output a"):
        grad_cam(model.eval(), torch.zeros(1, 1, 48, 48), torch.tensor([0]), "classifier.4")
