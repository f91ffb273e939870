"""ResNet-18/50/101 classifiers, plain or with one Identity-CBAM module after each stage:
the ``resnet18``, ``resnet50``, ``resnet101``, ``resnet50_icbam`` and ``resnet101_icbam``
classifier methods.

torchvision's ResNets with a new ``num_classes`` head and the stem adapted to 1 or 3
channels (``layers.stem.adapt_stem_conv``). With ``identity_cbam`` an
:class:`~ray_fer.models.layers.cbam.IdentityCBAM` is appended to each of layer1..layer4
(so it runs right after the stage, and torchvision's parameter names, hence pretrained
weights, are unchanged); the module is the identity at initialisation, so a fresh
Identity-CBAM ResNet computes exactly what the plain one does (Oh, Kim, Kim & Gwak).

Small inputs: ``small_stem=None`` replaces the 7x7 stride-2 conv + max-pool stem with a
3x3 stride-1 conv (no pool) below 96 px, so a 48 px face reaches layer4 as 6x6 instead
of 2x2. That stem is always freshly initialised: a 7x7 ImageNet kernel does not fit it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from torch import nn
from torchvision import models as tvm

from ray_fer.methods.classify import register_classifier
from ray_fer.methods.vgg import VGG_RECIPE
from ray_fer.models.layers.cbam import IdentityCBAM
from ray_fer.models.layers.pretrained import check_pretrained, imagenet_state_dict
from ray_fer.models.layers.stem import adapt_stem_conv

SMALL_INPUT_BELOW = 96


class Architecture(NamedTuple):
    build: Callable[..., tvm.ResNet]
    weights: tvm.WeightsEnum


ARCHITECTURES = {
    "resnet18": Architecture(tvm.resnet18, tvm.ResNet18_Weights.DEFAULT),
    "resnet50": Architecture(tvm.resnet50, tvm.ResNet50_Weights.DEFAULT),
    "resnet101": Architecture(tvm.resnet101, tvm.ResNet101_Weights.DEFAULT),
}


def _small_stem(in_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def resnet_classifier(
    arch: str,
    /,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: str | None = None,
    small_stem: bool | None = None,
) -> tvm.ResNet:
    """torchvision ``arch`` (a key of ARCHITECTURES) for ``num_classes``.

    ``pretrained="imagenet"`` loads torchvision's weights before anything is replaced
    (the head is always new); ``small_stem=None`` uses the small stem below 96 px.
    """
    use_imagenet = check_pretrained(pretrained)
    spec = ARCHITECTURES[arch]
    network = spec.build(weights=None)
    if use_imagenet:
        network.load_state_dict(imagenet_state_dict(spec.weights))
    if small_stem is None:
        small_stem = image_size < SMALL_INPUT_BELOW
    if small_stem:
        network.conv1 = _small_stem(in_channels)
        network.maxpool = nn.Identity()
    else:
        network.conv1 = adapt_stem_conv(network.conv1, in_channels, pretrained=use_imagenet)
    network.fc = nn.Linear(network.fc.in_features, num_classes)
    return network


def resnet_icbam_classifier(
    arch: str,
    /,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: str | None = None,
    small_stem: bool | None = None,
    cbam_reduction: int = 16,
) -> tvm.ResNet:
    """:func:`resnet_classifier` with an Identity-CBAM appended to each of layer1..layer4;
    ``cbam_reduction`` is the channel gate's MLP reduction r."""
    network = resnet_classifier(
        arch,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        pretrained=pretrained,
        small_stem=small_stem,
    )
    for stage in (network.layer1, network.layer2, network.layer3, network.layer4):
        stage.append(IdentityCBAM(stage[-1].conv3.out_channels, cbam_reduction))
    return network


resnet18 = partial(resnet_classifier, "resnet18")
resnet50 = partial(resnet_classifier, "resnet50")
resnet101 = partial(resnet_classifier, "resnet101")
resnet50_icbam = partial(resnet_icbam_classifier, "resnet50")
resnet101_icbam = partial(resnet_icbam_classifier, "resnet101")


# ResNet-18 for small faces (3x3 stem, no max-pool below 96 px), as FER2013's from-scratch
# ResNets are trained (Pramerdorfer & Kampel 2016; WuJie1010's code), with vgg_bn's recipe.
register_classifier("resnet18", resnet18, image_size=48, channels=1, explain_layer="layer4",
                    recipe=VGG_RECIPE)
# The Identity-CBAM paper's ResNet-50/101 at 224 px RGB, and the plain ones they are
# compared with.
for _name, _build in (("resnet50", resnet50), ("resnet101", resnet101),
                      ("resnet50_icbam", resnet50_icbam), ("resnet101_icbam", resnet101_icbam)):
    register_classifier(_name, _build, image_size=224, channels=3, explain_layer="layer4",
                        recipe={"optim": {"optimizer": "sgd", "lr": 0.05,
                                          "weight_decay": 5.0e-4},
                                "loss": {"label_smoothing": 0.1},
                                "train": {"epochs": 30, "batch_size": 64}})
