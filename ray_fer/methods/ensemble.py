"""An ensemble of trained classifiers as one model: the weighted mean of their class
probabilities.

Its output is the log of that mean, so it is read like any classifier's logits (argmax,
softmax, cross-entropy) by evaluation, test-time augmentation, prediction and export: an
ensemble exports as one ONNX graph. Each member sees the input converted to the size and
channels it was trained on (gray ↔ RGB, bilinear resize), as training converts stored
faces. ``members`` describe the networks (registered model name, options, input size,
channels); their weights come from the ensemble's state dict (``members.<i>.<member's own
keys>``).

It is a model, not a method: any classifier method carries it. ``python -m
ray_fer.ensemble`` writes an ensemble checkpoint whose config keeps the best member's
method and sets ``model.name: ensemble``, so evaluate, predict, export and explain
(with ``--layer``: an ensemble has no one Grad-CAM layer) read it as that method's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ray_fer.methods.registry import Model, build_model, get_model, register_model
from ray_fer.models.layers.inputs import fit_images

MEMBER_KEYS = ("model", "options", "image_size", "channels")


class Ensemble(nn.Module):
    """``log(Σ_i w_i softmax(member_i(x)))`` with ``w`` normalised to sum to 1."""

    def __init__(self, members: Sequence[nn.Module], inputs: Sequence[tuple[int, int]],
                 weights: Sequence[float]) -> None:
        super().__init__()
        if not members or len(members) != len(inputs) or len(members) != len(weights):
            raise ValueError("an ensemble needs one (size, channels) and one weight per member")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"ensemble weights must be >= 0 with a positive sum, got {weights}")
        self.members = nn.ModuleList(members)
        self.inputs = [tuple(i) for i in inputs]
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(self.weights[i] * member(fit_images(x, *self.inputs[i])).float().softmax(1)
                    for i, member in enumerate(self.members))
        return probs.clamp_min(1e-12).log()


def ensemble(*, num_classes: int, in_channels: int, image_size: int,
             members: Sequence[dict] = (), weights: Sequence[float] = ()) -> Ensemble:
    """An :class:`Ensemble` of ``members`` (dicts of :data:`MEMBER_KEYS`), each weighted by
    ``weights`` (default: equal). ``in_channels``/``image_size`` are the ensemble's input."""
    if not members:
        raise ValueError("model option 'members' must list the ensemble's networks")
    nets, inputs = [], []
    for i, member in enumerate(members):
        if not isinstance(member, dict) or set(member) - set(MEMBER_KEYS) or "model" not in member:
            raise ValueError(f"model option members[{i}] must map {', '.join(MEMBER_KEYS)} "
                             f"(model required), got {member!r}")
        defaults = get_model(member["model"])
        if defaults.task != "classify":
            raise ValueError(f"members[{i}]: {member['model']!r} is not a classifier")
        size = int(member.get("image_size") or defaults.image_size)
        channels = int(member.get("channels") or defaults.channels)
        nets.append(build_model(member["model"], num_classes=num_classes, in_channels=channels,
                                image_size=size, **(member.get("options") or {})))
        inputs.append((size, channels))
    return Ensemble(nets, inputs, list(weights) or [1.0] * len(nets))


# Its default input is the best member's; the ensemble checkpoint records it.
register_model(Model("ensemble", ensemble, image_size=48, channels=1, task="classify"))
