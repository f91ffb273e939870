"""An ensemble is one classifier: the weighted mean of its members' probabilities."""

import pytest
import torch

from ray_fer.methods.registry import build_model
from ray_fer.models.layers.inputs import fit_images

MEMBERS = [{"model": "deep_emotion", "options": {"dropout": 0.0}},
           {"model": "vgg_bn", "image_size": 32, "channels": 3, "options": {"hidden": 16}}]


def _members_and_ensemble(weights):
    torch.manual_seed(0)
    ensemble = build_model("ensemble", num_classes=5, in_channels=1, image_size=48,
                           members=MEMBERS, weights=weights).eval()
    return ensemble.members, ensemble


def test_output_is_the_log_of_the_weighted_mean_probability():
    (de, vgg), ensemble = _members_and_ensemble([3, 1])
    x = torch.rand(4, 1, 48, 48) * 2 - 1
    want = 0.75 * de(x).softmax(1) + 0.25 * vgg(fit_images(x, 32, 3)).softmax(1)
    got = ensemble(x)
    assert torch.allclose(got.exp(), want, atol=1e-6)
    assert torch.allclose(got.exp().sum(1), torch.ones(4), atol=1e-6)


def test_a_member_of_weight_zero_does_not_count():
    (de, _), ensemble = _members_and_ensemble([1, 0])
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    assert torch.allclose(ensemble(x).exp(), de(x).softmax(1), atol=1e-6)


def test_member_weights_load_from_the_ensemble_state_dict():
    _, a = _members_and_ensemble([1, 1])
    torch.manual_seed(1)
    b = build_model("ensemble", num_classes=5, in_channels=1, image_size=48, members=MEMBERS)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 48, 48)
    assert torch.equal(a(x), b.eval()(x))


@pytest.mark.parametrize(("options", "says"), [
    ({}, "must list the ensemble's networks"),
    ({"members": [{"model": "caf"}]}, "not a classifier"),
    ({"members": [{"model": "vgg_bn", "size": 32}]}, r"members\[0\] must map"),
    ({"members": MEMBERS, "weights": [1, -1]}, "must be >= 0"),
    ({"members": MEMBERS, "weights": [1]}, "one weight per member"),
])
def test_bad_members_are_named(options, says):
    with pytest.raises(ValueError, match=says):
        build_model("ensemble", num_classes=5, in_channels=1, image_size=48, **options)
