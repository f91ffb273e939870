"""Grad-CAM (Selvaraju et al. 2017) on a chosen layer of any network.

The layer's activations A (N, K, h, w) are weighted per channel by the spatial mean of
d score / dA, summed over channels, passed through ReLU, upsampled bilinearly to the
input size and divided by their per-image maximum: maps in [0, 1], all zero where no
position raises the score. Layers are named by their dotted module path
(``model.get_submodule``); each registered model declares its own
(:attr:`ray_fer.methods.registry.Model.explain_layer`), usually its last convolutional
stage, and :func:`last_relu` names the end of a plain feature stack. For Deep-Emotion the
map is in the coordinates of the spatial transformer's output, which is the identity at
initialisation and stays close to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def last_relu(root: str) -> Callable[[nn.Module], str]:
    """The layer choice of a network whose ``root`` stack ends in ReLUs and pooling: its
    last ReLU, before the final pooling, so the map keeps twice the final resolution."""

    def layer(model: nn.Module) -> str:
        relus = [name for name, m in model.get_submodule(root).named_children()
                 if isinstance(m, nn.ReLU)]
        return f"{root}.{relus[-1]}"

    return layer


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """``model``'s submodule at dotted path ``layer``; the error lists the top-level names."""
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = ", ".join(name for name, _ in model.named_children())
        raise ValueError(f"model has no layer {layer!r}; top-level modules: {names}") from None


def layer_activations_and_gradients(model: nn.Module, images: torch.Tensor,
                                    outputs: torch.Tensor, layer: str
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(activations of ``layer``, d score / d activations, d score / d images), where the
    score of image i is output ``outputs[i]``. ``model`` must be in eval mode."""
    captured: list[torch.Tensor] = []
    handle = find_layer(model, layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            scores = model(x).float()
            if not captured or captured[-1].ndim != 4:
                raise ValueError(f"layer {layer!r} does not output a (N, C, H, W) feature map")
            activation = captured[-1]
            picked = scores[torch.arange(len(scores), device=scores.device),
                            outputs.to(scores.device)]
            grad_act, grad_in = torch.autograd.grad(picked.sum(), [activation, x])
    finally:
        handle.remove()
    return activation.detach(), grad_act, grad_in


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map divided by its maximum (maps that are all <= 0 become zeros)."""
    peak = maps.flatten(1).amax(1).clamp_min(0)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return (maps.clamp_min(0) / scale[:, None, None]).float()


def cam_from(activation: torch.Tensor, gradient: torch.Tensor,
             size: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] from a layer's activations and gradients."""
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalise_maps(cam)


def grad_cam(model: nn.Module, images: torch.Tensor, outputs: torch.Tensor, layer: str
             ) -> torch.Tensor:
    """Grad-CAM of output ``outputs[i]`` for each image: (N, H, W) in [0, 1]."""
    activation, gradient, _ = layer_activations_and_gradients(model, images, outputs, layer)
    return cam_from(activation, gradient, tuple(images.shape[-2:]))
