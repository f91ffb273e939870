import os

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights

from ray_fer.models.layers.pretrained import (
    PretrainedWeightsUnavailable,
    check_pretrained,
    imagenet_state_dict,
)

WEIGHTS = MobileNet_V2_Weights.DEFAULT


def test_weights_are_read_from_the_hub_cache(offline_torch_hub):
    saved = {"layer.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(saved, offline_torch_hub / os.path.basename(WEIGHTS.url))
    loaded = imagenet_state_dict(WEIGHTS)
    assert torch.equal(loaded["layer.weight"], saved["layer.weight"])


def test_unreachable_weights_give_an_actionable_error(offline_torch_hub):
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        imagenet_state_dict(WEIGHTS)
    message = str(caught.value)
    assert "no network access" in message
    assert WEIGHTS.url in message
    assert str(offline_torch_hub / os.path.basename(WEIGHTS.url)) in message
    assert "pretrained=None" in message
    assert os.listdir(offline_torch_hub) == []


def test_pretrained_choices():
    assert check_pretrained("imagenet") is True
    assert check_pretrained(None) is False
    with pytest.raises(ValueError, match="'imagenet' or None"):
        check_pretrained("cifar")
