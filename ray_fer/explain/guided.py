"""Guided Backpropagation (Springenberg et al. 2015) and Guided Grad-CAM (Selvaraju et al.).

Guided Backpropagation changes only the backward pass of the rectifiers: a ReLU passes
gradient back where its input was positive *and* the incoming gradient is positive, so
every gradient leaving a guided unit is >= 0. ReLU6 (MobileNetV2) is guided the same
way (inside (0, 6)); SiLU (EfficientNet) passes the positive part of the incoming
gradient times the positive part of its own derivative. Other non-linearities (the
sigmoid gates of CBAM, CAF's tanh) backpropagate as usual. Guided Grad-CAM multiplies the
guided gradient by the Grad-CAM map of the same output.

Display maps reduce the (N, C, H, W) input gradient to (N, H, W): the largest absolute
value over channels, divided by its per-image maximum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ray_fer.explain.gradcam import cam_from, layer_activations_and_gradients, normalise_maps


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        passing = x > 0
        if ctx.upper is not None:
            passing &= x < ctx.upper
        return grad.clamp_min(0) * passing, None


class _GuidedSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        derivative = s * (1 + x * (1 - s))
        return grad.clamp_min(0) * derivative.clamp_min(0)


def _guided_forward(module: nn.Module):
    if isinstance(module, nn.ReLU6):
        return lambda x: _GuidedReLU.apply(x, 6.0)
    if isinstance(module, nn.ReLU):
        return lambda x: _GuidedReLU.apply(x, None)
    if isinstance(module, nn.SiLU):
        return _GuidedSiLU.apply
    return None


@contextlib.contextmanager
def guided(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s ReLU, ReLU6 and SiLU modules backpropagate guided.

    Yields how many modules were guided. The modules' own ``forward`` is shadowed by an
    instance attribute and restored on exit, so the model is unchanged afterwards.
    """
    patched = []
    for module in model.modules():
        forward = _guided_forward(module)
        if forward is not None:
            module.forward = forward
            patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def guided_gradients(model: nn.Module, images: torch.Tensor, outputs: torch.Tensor
                     ) -> torch.Tensor:
    """Guided-backpropagated d score / d image, (N, C, H, W), for output ``outputs[i]``."""
    with guided(model), torch.enable_grad():
        x = images.detach().requires_grad_(True)
        scores = model(x).float()
        picked = scores[torch.arange(len(scores), device=scores.device),
                        outputs.to(scores.device)]
        (grad,) = torch.autograd.grad(picked.sum(), x)
    return grad


def gradient_map(gradients: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) input gradients → (N, H, W) display maps in [0, 1]."""
    return normalise_maps(gradients.abs().amax(1))


def guided_backprop(model: nn.Module, images: torch.Tensor, outputs: torch.Tensor
                    ) -> torch.Tensor:
    """Guided Backpropagation display maps (N, H, W) in [0, 1]."""
    return gradient_map(guided_gradients(model, images, outputs))


def guided_grad_cam(model: nn.Module, images: torch.Tensor, outputs: torch.Tensor,
                    layer: str) -> torch.Tensor:
    """Guided Grad-CAM display maps (N, H, W) in [0, 1]: guided gradients x Grad-CAM.

    The Grad-CAM factor is computed with the model's ordinary backward pass, the guided
    gradients with the guided one, as in the method's definition.
    """
    activation, gradient, _ = layer_activations_and_gradients(model, images, outputs, layer)
    cam = cam_from(activation, gradient, tuple(images.shape[-2:]))
    return gradient_map(guided_gradients(model, images, outputs) * cam[:, None])
