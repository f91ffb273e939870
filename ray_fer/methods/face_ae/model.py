"""Face-generating autoencoder for V/A rebalancing (Kim, Park & Chang, Kwangwoon University).

Stage 1, :class:`FaceAutoencoder`: the encoder E, repeated [3x3 conv, BN, ReLU, max-pool],
maps a 3x64x64 face to an appearance code z in R^32 plus valence v and arousal a (tanh);
the decoder D, repeated [upsample, 3x3 conv, BN, ReLU], renders a face from (z, v, a)
(sigmoid output, images in [0, 1]). It is trained on pairs of one person with different
expressions (:func:`ae_loss`): E must read the V/A of I_i, and D must turn I_i's
appearance into I_j when given I_j's V/A.

Stage 2, :class:`VaRegressor`: ResNet-34 with a 2-output linear head, trained on faces
re-rendered by D at V/A drawn uniformly in the unit disk (:func:`rerender_batch`), so it
sees every region of the V/A plane equally often.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from ray_fer.data.targets import sample_unit_disk
from ray_fer.models.layers.pretrained import check_pretrained, imagenet_state_dict
from ray_fer.models.layers.stem import adapt_stem_conv

LATENT_DIM = 32
_STAGES = 4  # four 2x poolings: 64 px -> 4 px


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class FaceAutoencoder(nn.Module):
    """E: image -> (z, v, a); D: (z, v, a) -> image. ``image_size`` must be a multiple of 16."""

    def __init__(self, in_channels: int = 3, image_size: int = 64, latent_dim: int = LATENT_DIM,
                 width: int = 32) -> None:
        super().__init__()
        if image_size % 2**_STAGES:
            raise ValueError(f"image_size must be a multiple of {2**_STAGES}, got {image_size}")
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        channels = [width * 2**i for i in range(_STAGES)]  # 32, 64, 128, 256
        self.bottom = image_size // 2**_STAGES
        flat = channels[-1] * self.bottom**2

        encoder: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            encoder += [*_conv_bn_relu(c_in, c), nn.MaxPool2d(2)]
            c_in = c
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), nn.Linear(flat, latent_dim + 2))

        self.project = nn.Linear(latent_dim + 2, flat)
        decoder: list[nn.Module] = []
        for c_in, c_out in zip(channels[::-1], channels[::-1][1:], strict=False):
            decoder += [nn.Upsample(scale_factor=2), *_conv_bn_relu(c_in, c_out)]
        # the last stage renders the image: no BN/ReLU, a sigmoid into [0, 1]
        decoder += [nn.Upsample(scale_factor=2), nn.Conv2d(channels[0], in_channels, 3, padding=1),
                    nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)
        self._channels = channels[-1]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z (N, latent_dim), v (N,), a (N,)) of images (N, C, S, S) in [0, 1]."""
        code = self.encoder(images)
        va = torch.tanh(code[:, self.latent_dim:])
        return code[:, : self.latent_dim], va[:, 0], va[:, 1]

    def decode(self, z: torch.Tensor, valence: torch.Tensor, arousal: torch.Tensor) -> torch.Tensor:
        """Images (N, C, S, S) in [0, 1] with appearance z at (valence, arousal)."""
        code = torch.cat([z, valence[:, None], arousal[:, None]], dim=1)
        x = self.project(code).view(-1, self._channels, self.bottom, self.bottom)
        return self.decoder(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction at the images' own estimated V/A."""
        return self.decode(*self.encode(images))


class AeLoss(NamedTuple):
    """L_AE and its parts (detach the parts for logging)."""

    total: torch.Tensor
    valence: torch.Tensor
    arousal: torch.Tensor
    reconstruction: torch.Tensor


def ae_loss(model: FaceAutoencoder, img_i: torch.Tensor, img_j: torch.Tensor,
            va_i: torch.Tensor, va_j: torch.Tensor, lambda_v: float = 0.5,
            lambda_a: float = 0.5, recon_weight: float = 1.0) -> AeLoss:
    """L_AE = lambda_v ||v^_i - v_i||^2 + lambda_a ||a^_i - a_i||^2
    + recon_weight ||D(z_i, v_j, a_j) - I_j||^2 for pairs (I_i, I_j) of the same person with
    different expressions (the paper: recon_weight = 1); ``va_*`` are (N, 2) (valence,
    arousal). Each squared norm is averaged over the batch (and the pixels), so the weights
    do not depend on the image size."""
    z_i, v_i, a_i = model.encode(img_i)
    rendered = model.decode(z_i, va_j[:, 0], va_j[:, 1])
    loss_v = F.mse_loss(v_i, va_i[:, 0])
    loss_a = F.mse_loss(a_i, va_i[:, 1])
    loss_recon = F.mse_loss(rendered, img_j)
    total = lambda_v * loss_v + lambda_a * loss_a + recon_weight * loss_recon
    return AeLoss(total, loss_v, loss_a, loss_recon)


class VaRegressor(nn.Module):
    """torchvision ResNet-34 with a 2-output linear head (valence, arousal); inputs of
    another size are resized (bilinear) to ``input_size`` first, as the paper resizes the
    64 px renderings to 224."""

    def __init__(self, in_channels: int = 3, input_size: int = 224,
                 pretrained: str | None = None) -> None:
        super().__init__()
        use_imagenet = check_pretrained(pretrained)
        network = tvm.resnet34(weights=None)
        if use_imagenet:
            network.load_state_dict(imagenet_state_dict(tvm.ResNet34_Weights.DEFAULT))
        network.conv1 = adapt_stem_conv(network.conv1, in_channels, pretrained=use_imagenet)
        network.fc = nn.Linear(network.fc.in_features, 2)
        self.network, self.input_size = network, input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size),
                                   mode="bilinear", align_corners=False)
        return self.network(images)


@torch.no_grad()
def rerender_batch(ae: FaceAutoencoder, images: torch.Tensor, rng: np.random.Generator,
                   output_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-2 training data: each face re-rendered by the (frozen, eval-mode) autoencoder
    with its own appearance at (v, a) drawn uniformly in the unit disk, resized to
    ``output_size`` when given. Returns (images (N, C, S, S), targets (N, 2))."""
    was_training = ae.training
    ae.eval()
    try:
        z, _, _ = ae.encode(images)
        v, a = sample_unit_disk(len(images), rng)
        targets = torch.from_numpy(np.stack([v, a], axis=1)).to(images.device, images.dtype)
        rendered = ae.decode(z, targets[:, 0], targets[:, 1])
    finally:
        ae.train(was_training)
    if output_size is not None and rendered.shape[-1] != output_size:
        rendered = F.interpolate(rendered, size=(output_size, output_size), mode="bilinear",
                                 align_corners=False)
    return rendered, targets


#: The paper's Fig. 2 grid: valence -0.4..0.4 and arousal -0.3..0.3 in steps of 0.1.
FIGURE_VALENCES = tuple(round(-0.4 + 0.1 * i, 1) for i in range(9))
FIGURE_AROUSALS = tuple(round(-0.3 + 0.1 * i, 1) for i in range(7))


@torch.no_grad()
def render_va_grid(ae: FaceAutoencoder, image: torch.Tensor,
                   valences: tuple[float, ...] = FIGURE_VALENCES,
                   arousals: tuple[float, ...] = FIGURE_AROUSALS) -> torch.Tensor:
    """One face (C, S, S) re-rendered at every (valence, arousal) of the grid, in eval
    mode: (len(arousals), len(valences), C, S, S), arousal rows, valence columns."""
    was_training = ae.training
    ae.eval()
    try:
        z, _, _ = ae.encode(image[None])
        a, v = torch.meshgrid(torch.tensor(arousals), torch.tensor(valences), indexing="ij")
        v, a = v.reshape(-1).to(z), a.reshape(-1).to(z)
        faces = ae.decode(z.expand(len(v), -1), v, a)
    finally:
        ae.train(was_training)
    return faces.view(len(arousals), len(valences), *faces.shape[1:])


def face_ae(*, num_classes: int, in_channels: int, image_size: int,
            latent_dim: int = LATENT_DIM, width: int = 32) -> FaceAutoencoder:
    """Registry factory of the stage-1 autoencoder (``num_classes`` does not shape it)."""
    return FaceAutoencoder(in_channels, image_size, latent_dim, width)


def face_ae_regressor(*, num_classes: int, in_channels: int, image_size: int,
                      pretrained: str | None = None) -> VaRegressor:
    """Registry factory of the stage-2 ResNet-34 V/A regressor; ``image_size`` is its
    input size (224 in the paper)."""
    return VaRegressor(in_channels, image_size, pretrained)
