"""Grad-CAM: input-sized maps normalised to [0, 1], the layer every model declares, V/A."""

from __future__ import annotations

import pytest
import torch

from ray_fer.explain.gradcam import find_layer, grad_cam
from ray_fer.explain.run import ExplainOptions, Subject, attribute
from ray_fer.methods.registry import build_model, get_model, model_names


def _check_unit_maps(maps: torch.Tensor, n: int, size: int) -> None:
    assert maps.shape == (n, size, size)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert maps.min() >= 0
    peaks = maps.flatten(1).amax(1)
    # Each map is divided by its own maximum; a map with nothing positive stays zero.
    assert all(p == pytest.approx(1.0) or p == 0 for p in peaks.tolist())
    assert (peaks == 1).any()


def test_gradcam_maps_have_the_input_shape_and_a_unit_peak(classifier, images):
    layer = classifier.explain_layer
    assert layer == "features.9"  # the last ReLU, before the final pooling
    maps = grad_cam(classifier.model, images, torch.arange(6), layer)
    _check_unit_maps(maps, 6, 48)
    assert not torch.equal(maps[0], maps[1])


def test_gradcam_of_a_va_model_for_valence_and_arousal(va_model, images):
    layer = va_model.explain_layer
    for output in (0, 1):
        maps = grad_cam(va_model.model, images, torch.full((6,), output), layer)
        assert maps.shape == (6, 48, 48) and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("name", [n for n in model_names() if get_model(n).explain_layer])
def test_every_model_that_declares_a_layer_gets_maps_from_it(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, image_size=48, in_channels=1).eval()
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    maps = grad_cam(model, x, torch.tensor([1, 0]), get_model(name).gradcam_layer(model))
    assert maps.shape == (2, 48, 48) and maps.min() >= 0 and maps.max() <= 1


def test_models_without_a_layer_and_unknown_layers_are_named(classifier):
    assert {"ensemble", "face_ae", "face_ae_regressor"} <= {
        n for n in model_names() if not get_model(n).explain_layer}
    model = build_model("deep_emotion", num_classes=3)
    subject = Subject(model.eval(), "classify", ["a", "b", "c"])
    with pytest.raises(ValueError, match="--layer"):
        attribute(subject, torch.zeros(1, 1, 48, 48), torch.tensor([0]), "gradcam",
                  ExplainOptions())
    with pytest.raises(ValueError, match="no layer 'features.99'.*localization"):
        find_layer(model, "features.99")
    with pytest.raises(ValueError, match="does not output a"):
        grad_cam(model.eval(), torch.zeros(1, 1, 48, 48), torch.tensor([0]), "classifier.4")
