"""Loading torchvision's ImageNet weights with an actionable error when they cannot be had."""

from __future__ import annotations

import os
from typing import Any

import torch
from torchvision.models import WeightsEnum

from ray_fer.errors import UserError

PRETRAINED_CHOICES = ("imagenet", None)


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """ImageNet weights were asked for but could not be read from cache or downloaded."""


def check_pretrained(pretrained: str | None) -> bool:
    """Whether ``pretrained`` asks for ImageNet weights; ValueError for anything unknown."""
    if pretrained not in PRETRAINED_CHOICES:
        raise ValueError(f"pretrained must be 'imagenet' or None, got {pretrained!r}")
    return pretrained == "imagenet"


def imagenet_state_dict(weights: WeightsEnum) -> dict[str, Any]:
    """The state dict of ``weights``, from torch hub's cache or downloaded into it.

    Raises PretrainedWeightsUnavailable naming the URL, the cache file to provide and the
    way out (``pretrained=None``) when the download fails, e.g. on a machine without
    network access.
    """
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cache_file = os.path.join(cache_dir, os.path.basename(weights.url))
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:
        raise PretrainedWeightsUnavailable(
            f"could not download the ImageNet weights {weights} from {weights.url} ({error}). "
            "This machine seems to have no network access to it: download the file where "
            f"there is, put it at {cache_file} (the cache follows TORCH_HOME), "
            "or build the model with pretrained=None to train from scratch."
        ) from error
