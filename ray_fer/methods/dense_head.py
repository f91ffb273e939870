"""Efficient ImageNet backbones + two dense layers (Kim, Yang & Choi, "Feature Comparison of
Emotion Recognition Models using Face Images"): the ``mobilenet_v2_dense``,
``efficientnet_b0_dense`` and ``efficientnet_b2_dense`` classifier methods.

torchvision's MobileNetV2, EfficientNet-B0 and EfficientNet-B2 feature extractors, global
average pooling, then the paper's "Dense-Dense" head: dropout -> FC(hidden) -> ReLU ->
dropout -> FC(classes).

Small inputs: these backbones downsample 32x, so a 48x48 FER2013 face ends as a 2x2 map
(1.5 rounded up) and most of the backbone works on almost no spatial extent. The default
``stem_stride=None`` therefore sets the first convolution's stride to 1 below 96 px
(2 from 96 px up, torchvision's own stride): a 48 px face then reaches the head as a 3x3
map, the same geometry as a 96 px input with the usual stem, without storing upsampled
shards or paying for upsampling in the input pipeline. That is why these models' default
size is FER2013's native 48 px. The stride change keeps pretrained
weights usable (the kernels are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torchvision import models as tvm

from ray_fer.methods.classify import register_classifier
from ray_fer.models.layers.pretrained import check_pretrained, imagenet_state_dict
from ray_fer.models.layers.stem import adapt_stem_conv

SMALL_INPUT_BELOW = 96


class Backbone(NamedTuple):
    build: Callable[..., nn.Module]
    weights: tvm.WeightsEnum


BACKBONES = {
    "mobilenet_v2": Backbone(tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.DEFAULT),
    "efficientnet_b0": Backbone(tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.DEFAULT),
    "efficientnet_b2": Backbone(tvm.efficientnet_b2, tvm.EfficientNet_B2_Weights.DEFAULT),
}


class DenseHeadClassifier(nn.Module):
    """``features`` -> global average pool -> two dense layers."""

    def __init__(
        self, features: nn.Module, feature_channels: int, num_classes: int, hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(feature_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def dense_head_model(
    backbone: str,
    /,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: str | None = None,
    hidden: int = 256,
    dropout: float = 0.5,
    stem_stride: int | None = None,
) -> DenseHeadClassifier:
    """``backbone`` (a key of BACKBONES) with the dense head.

    ``pretrained="imagenet"`` loads torchvision's ImageNet weights into the backbone (the
    head is always new); ``stem_stride=None`` picks 1 below 96 px and 2 otherwise.
    """
    use_imagenet = check_pretrained(pretrained)
    spec = BACKBONES[backbone]
    network = spec.build(weights=None)
    if use_imagenet:
        network.load_state_dict(imagenet_state_dict(spec.weights))
    if stem_stride is None:
        stem_stride = 1 if image_size < SMALL_INPUT_BELOW else 2
    stem = network.features[0]
    stem[0] = adapt_stem_conv(stem[0], in_channels, pretrained=use_imagenet, stride=stem_stride)
    return DenseHeadClassifier(
        network.features, network.classifier[-1].in_features, num_classes, hidden, dropout
    )


mobilenet_v2_dense = partial(dense_head_model, "mobilenet_v2")
efficientnet_b0_dense = partial(dense_head_model, "efficientnet_b0")
efficientnet_b2_dense = partial(dense_head_model, "efficientnet_b2")


# The paper trains them 100 epochs. At 48 px their steps are hundreds of small kernels whose
# launches, not the GPU, set the pace: compiled and replayed as CUDA graphs they train 3-4x
# faster (GPU only; benchmarks/RESULTS.md#cuda-graphs-for-the-efficient-backbones-at-48-px).
# Per backbone, from 100-epoch FER2013 runs (benchmarks/RESULTS.md#fer2013-recipe-comparisons):
# MobileNetV2 gains 1.5 points from SGD + weight decay, which costs B0/B2 0.6-1.2 points;
# B0/B2 gain 0.7-0.9 from less head dropout instead (0.5 -> 0.2). Grad-CAM reads the end
# of the backbone.
_EFFICIENT = {"epochs": 100, "compile": True, "cuda_graphs": True}
register_classifier("mobilenet_v2_dense", mobilenet_v2_dense, image_size=48, channels=1,
                    explain_layer="features", recipe={
                        "optim": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5.0e-4},
                        "train": _EFFICIENT})
for _name, _build in (("efficientnet_b0_dense", efficientnet_b0_dense),
                      ("efficientnet_b2_dense", efficientnet_b2_dense)):
    register_classifier(_name, _build, image_size=48, channels=1, explain_layer="features",
                        recipe={"model": {"options": {"dropout": 0.2}}, "train": _EFFICIENT})
