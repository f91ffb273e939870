"""Deep-Emotion (Minaee & Abdolrashidi 2019): an attentional CNN with a spatial transformer,
and its two classifier methods, ``deep_emotion`` and ``deep_emotion_wide``.

Layout of the common re-implementation (omarsayed7/Deep-Emotion) of arXiv 1902.01019:

- spatial transformer on the input: localization convs 7x7 (8 filters) and 5x5 (10
  filters), each followed by 2x2 max-pooling and ReLU, then FC -> 32 -> ReLU -> FC -> 6
  regressing the affine theta, whose last layer starts at zero weights and identity bias
  (the warp is the identity at initialisation); affine grid + bilinear sampling warp the
  input, and the warped image is what the feature branch sees;
- feature branch: four 3x3 convolutions (no padding) with ReLU, 2x2 max-pooling after every
  two, dropout, then FC -> hidden -> ReLU -> FC -> classes.

At 48x48 the flattened sizes are the reference's 640 (localization) and 810 (features);
here they follow from the configured image size. ``batchnorm="last"`` keeps the
reference's single BatchNorm after the fourth convolution; ``"all"`` puts one after every
convolution, which with a larger ``width`` is the ``deep_emotion_wide`` variant. The
reference applies dropout unconditionally (``F.dropout`` defaults to training mode); here
it is an ``nn.Dropout``, so evaluation is deterministic.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ray_fer.explain.gradcam import last_relu
from ray_fer.methods.classify import register_classifier

BatchNormPlacement = Literal["last", "all"]


def _conv_pool_size(size: int, kernels: tuple[int, ...], pool_after: tuple[int, ...]) -> int:
    """Spatial size after unpadded convolutions with the given kernels, 2x2-pooled after some."""
    for index, kernel in enumerate(kernels):
        size = size - kernel + 1
        if index in pool_after:
            size //= 2
    return size


class DeepEmotion(nn.Module):
    """Deep-Emotion classifier; ``stn(x)`` and ``theta(x)`` expose the attention warp."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 48,
        *,
        width: int = 10,
        growth: int = 1,
        hidden: int = 50,
        dropout: float = 0.5,
        batchnorm: BatchNormPlacement = "last",
    ) -> None:
        super().__init__()
        if batchnorm not in ("last", "all"):
            raise ValueError(f"batchnorm must be 'last' or 'all', got {batchnorm!r}")
        loc_size = _conv_pool_size(image_size, (7, 5), pool_after=(0, 1))
        feature_size = _conv_pool_size(image_size, (3, 3, 3, 3), pool_after=(1, 3))
        if min(loc_size, feature_size) < 1:
            raise ValueError(f"image_size {image_size} is too small for Deep-Emotion (min 18)")

        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=7),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(10 * loc_size * loc_size, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, 6),
        )
        theta_head = self.localization[-1]
        nn.init.zeros_(theta_head.weight)
        with torch.no_grad():
            theta_head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

        widths = (width, width, width * growth, width * growth)
        layers: list[nn.Module] = []
        previous = in_channels
        for index, filters in enumerate(widths):
            layers.append(nn.Conv2d(previous, filters, kernel_size=3))
            if batchnorm == "all" or index == len(widths) - 1:
                layers.append(nn.BatchNorm2d(filters))
            layers.append(nn.ReLU(inplace=True))
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            previous = filters
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(previous * feature_size * feature_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The affine transforms (N, 2, 3) the localization network predicts for ``x``."""
        return self.localization(x).reshape(-1, 2, 3)

    def stn(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` warped by its predicted affine transform (bilinear, same size)."""
        grid = F.affine_grid(self.theta(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.stn(x)))


def deep_emotion(
    *, num_classes: int, in_channels: int, image_size: int, hidden: int = 50, dropout: float = 0.5
) -> DeepEmotion:
    """Deep-Emotion as in the reference: 10 filters per conv, one BatchNorm, FC 50."""
    return DeepEmotion(
        num_classes, in_channels, image_size, hidden=hidden, dropout=dropout, batchnorm="last"
    )


def deep_emotion_wide(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int = 64,
    hidden: int = 256,
    dropout: float = 0.5,
) -> DeepEmotion:
    """Deep-Emotion widened: ``width`` filters in the first conv pair, twice that in the
    second, BatchNorm after every conv, a larger FC layer; the same spatial transformer."""
    return DeepEmotion(
        num_classes,
        in_channels,
        image_size,
        width=width,
        growth=2,
        hidden=hidden,
        dropout=dropout,
        batchnorm="all",
    )


# The paper: Adam, cross-entropy + λ‖w‖² (λ tuned on validation). Grad-CAM reads the last
# ReLU of the feature branch, before its final pooling.
register_classifier("deep_emotion", deep_emotion, image_size=48, channels=1,
                    explain_layer=last_relu("features"), recipe={
                        "optim": {"lr": 1.0e-3}, "loss": {"l2": 1.0e-4},
                        "train": {"epochs": 60, "batch_size": 128}})
register_classifier("deep_emotion_wide", deep_emotion_wide, image_size=48, channels=1,
                    explain_layer=last_relu("features"), recipe={
                        "optim": {"lr": 2.0e-3}, "loss": {"l2": 1.0e-4},
                        "train": {"epochs": 60, "batch_size": 128}})
