"""CAF: contrastive adversarial learning for person-independent V/A (Kim & Song, AAAI 2021).

Three networks: a shared encoder f_e (ResNet-18, or a small CNN for
48x48 faces), a critic f_c on the latent features that learns to tell strong-emotion
features from weak ones, and an FC regressor f_r giving (valence, arousal) in [-1, 1].
Inference is ``regressor(encoder(x))`` (:meth:`CafModel.forward`); the critic only
shapes the encoder during training (losses in :mod:`ray_fer.methods.caf.losses`, steps
in :mod:`ray_fer.methods.caf.steps`). ``baseline=True`` builds the same encoder and regressor
with no critic: the no-critic baseline the method is compared against.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchvision import models as tvm

from ray_fer.models.layers.pretrained import check_pretrained, imagenet_state_dict
from ray_fer.models.layers.stem import adapt_stem_conv

EncoderName = Literal["resnet18", "small_cnn"]
ENCODERS: tuple[EncoderName, ...] = ("resnet18", "small_cnn")


def resnet18_encoder(in_channels: int, pretrained: str | None) -> tuple[nn.Module, int]:
    """torchvision's ResNet-18 up to global pooling (512-d features)."""
    use_imagenet = check_pretrained(pretrained)
    network = tvm.resnet18(weights=None)
    if use_imagenet:
        network.load_state_dict(imagenet_state_dict(tvm.ResNet18_Weights.DEFAULT))
    network.conv1 = adapt_stem_conv(network.conv1, in_channels, pretrained=use_imagenet)
    features = network.fc.in_features
    network.fc = nn.Identity()
    return network, features


def small_cnn_encoder(in_channels: int, width: int = 32) -> tuple[nn.Module, int]:
    """Four [3x3 conv, BN, ReLU] x 2 + max-pool blocks (width, 2w, 4w, 8w channels), global
    average pooling: 48x48 faces reach the pool as 3x3."""
    layers: list[nn.Module] = []
    channels = in_channels
    for out in (width, 2 * width, 4 * width, 8 * width):
        for _ in range(2):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels


class Critic(nn.Module):
    """MLP f_c: features -> ``out_dim`` critic values; holds the Lagrange multiplier of
    its Fisher-IPM constraint (a buffer, so checkpoints carry it)."""

    def __init__(self, in_features: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden // 2), nn.ReLU(inplace=True),
            nn.Linear(hidden // 2, out_dim),
        )
        self.register_buffer("lagrange", torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class CafModel(nn.Module):
    """Encoder + regressor (+ critic unless ``baseline``); ``forward`` predicts (N, 2) V/A."""

    def __init__(
        self,
        in_channels: int,
        *,
        encoder: EncoderName = "resnet18",
        pretrained: str | None = None,
        small_cnn_width: int = 32,
        regressor_hidden: int = 64,
        critic_hidden: int = 64,
        critic_dim: int = 1,
        baseline: bool = False,
    ) -> None:
        super().__init__()
        if encoder == "resnet18":
            self.encoder, features = resnet18_encoder(in_channels, pretrained)
        elif encoder == "small_cnn":
            if check_pretrained(pretrained):
                raise ValueError("the small_cnn encoder has no pretrained weights; "
                                 "use pretrained=None or encoder='resnet18'")
            self.encoder, features = small_cnn_encoder(in_channels, small_cnn_width)
        else:
            raise ValueError(f"unknown encoder {encoder!r}; choose one of: {', '.join(ENCODERS)}")
        self.feature_dim = features
        self.regressor = nn.Sequential(
            nn.Linear(features, regressor_hidden), nn.ReLU(inplace=True),
            nn.Linear(regressor_hidden, 2), nn.Tanh(),
        )
        self.critic = None if baseline else Critic(features, critic_hidden, critic_dim)

    @property
    def baseline(self) -> bool:
        """True for the no-critic baseline."""
        return self.critic is None

    def encoder_regressor_parameters(self) -> list[nn.Parameter]:
        """What the encoder step updates."""
        return [*self.encoder.parameters(), *self.regressor.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.encoder(x))


def caf(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    encoder: EncoderName | None = None,
    pretrained: str | None = None,
    small_cnn_width: int = 32,
    regressor_hidden: int = 64,
    critic_hidden: int = 64,
    critic_dim: int = 1,
    baseline: bool = False,
) -> CafModel:
    """Registry factory. The output is always (valence, arousal), so ``num_classes`` (the
    dataset's categories) does not shape the model. ``encoder=None`` picks ResNet-18 from
    64 px up and the small CNN below. ``critic_dim`` is the critic's output size (the
    authors' code uses 16; 1 is a scalar critic)."""
    if encoder is None:
        encoder = "resnet18" if image_size >= 64 else "small_cnn"
    return CafModel(in_channels, encoder=encoder, pretrained=pretrained,
                    small_cnn_width=small_cnn_width, regressor_hidden=regressor_hidden,
                    critic_hidden=critic_hidden, critic_dim=critic_dim, baseline=baseline)


def caf_baseline(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    encoder: EncoderName | None = None,
    pretrained: str | None = None,
    small_cnn_width: int = 32,
    regressor_hidden: int = 64,
) -> CafModel:
    """Registry factory of the no-critic baseline (same encoder and regressor as ``caf``)."""
    return caf(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
               encoder=encoder, pretrained=pretrained, small_cnn_width=small_cnn_width,
               regressor_hidden=regressor_hidden, baseline=True)
