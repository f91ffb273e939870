"""Guided Backpropagation: non-negative gradients out of every guided unit; Guided Grad-CAM."""

from __future__ import annotations

import torch
from torch import nn

from ray_fer.explain.gradcam import grad_cam
from ray_fer.explain.guided import guided, guided_backprop, guided_grad_cam, guided_gradients


def test_gradient_leaving_every_relu_is_non_negative(classifier, images):
    model = classifier.model
    grads: list[torch.Tensor] = []

    def keep_input_grad(_module, inputs):
        if inputs[0].requires_grad:
            inputs[0].register_hook(grads.append)

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_pre_hook(keep_input_grad) for m in relus]
    try:
        guided_gradients(model, images, torch.arange(6))
    finally:
        for h in handles:
            h.remove()
    assert len(grads) == len(relus) == 8  # localization 3, features 4, classifier 1
    assert all((g >= 0).all() for g in grads)
    assert any((g > 0).any() for g in grads)


def test_input_gradient_is_non_negative_when_the_input_enters_a_relu():
    """The definition makes gradients non-negative below each guided ReLU; an input that goes
    straight into one therefore gets none below zero, unlike with plain backpropagation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(4, 1, 8, 8)
    outputs = torch.tensor([0, 1, 2, 0])
    guided_grad = guided_gradients(model, x, outputs)
    assert (guided_grad >= 0).all() and (guided_grad > 0).any()
    plain = x.clone().requires_grad_(True)
    model(plain)[torch.arange(4), outputs].sum().backward()
    assert (plain.grad < 0).any()


def test_the_model_is_unchanged_after_guiding(classifier, images):
    model = classifier.model
    before = model(images)
    with guided(model) as count:
        assert count == 8
    assert all("forward" not in vars(m) for m in model.modules())
    torch.testing.assert_close(model(images), before)


def test_guided_maps_are_unit_normalised_and_guided_gradcam_vanishes_with_gradcam(
        classifier, images):
    outputs = torch.arange(6)
    backprop = guided_backprop(classifier.model, images, outputs)
    combined = guided_grad_cam(classifier.model, images, outputs, "features.9")
    cam = grad_cam(classifier.model, images, outputs, "features.9")
    for maps in (backprop, combined):
        assert maps.shape == (6, 48, 48) and maps.min() >= 0
        assert torch.allclose(maps.flatten(1).amax(1), torch.ones(6))
    assert (combined[cam == 0] == 0).all()
