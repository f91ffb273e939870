import os

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from ray_fer.methods.registry import build_model
from ray_fer.models.layers.cbam import IdentityCBAM
from ray_fer.models.layers.pretrained import PretrainedWeightsUnavailable

STAGE_CHANNELS = (256, 512, 1024, 2048)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stages(model: nn.Module) -> list[nn.Sequential]:
    return [model.layer1, model.layer2, model.layer3, model.layer4]


@pytest.mark.parametrize("depth", [50, 101])
def test_parameter_counts_are_torchvision_plus_the_modules(depth):
    with torch.device("meta"):  # shapes only: no time spent initialising weights
        reference = _count(getattr(tvm, f"resnet{depth}")(num_classes=7))
        modules = sum(_count(IdentityCBAM(c)) for c in STAGE_CHANNELS)
        plain = build_model(f"resnet{depth}", num_classes=7)
        with_cbam = build_model(f"resnet{depth}_icbam", num_classes=7)
    assert _count(plain) == reference
    assert _count(with_cbam) == reference + modules


def test_one_identity_cbam_module_ends_each_stage():
    model = build_model("resnet50_icbam", num_classes=7)
    assert sum(isinstance(m, IdentityCBAM) for m in model.modules()) == 4
    for stage, channels in zip(_stages(model), STAGE_CHANNELS, strict=True):
        assert isinstance(stage[-1], IdentityCBAM)
        assert stage[-1].bottleneck[0].in_channels == channels


def test_identity_cbam_network_computes_the_plain_network_at_init():
    options = {"num_classes": 7, "image_size": 64, "small_stem": False}
    with_cbam = build_model("resnet50_icbam", **options).eval()
    plain = build_model("resnet50", **options).eval()
    result = plain.load_state_dict(with_cbam.state_dict(), strict=False)
    module_names = tuple(
        f"{name}." for name, m in with_cbam.named_modules() if isinstance(m, IdentityCBAM)
    )
    assert result.missing_keys == []
    assert result.unexpected_keys
    assert all(key.startswith(module_names) for key in result.unexpected_keys)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_cbam(x), plain(x))


@pytest.mark.parametrize(
    ("image_size", "small_stem", "kernel", "stride", "pooled"),
    [
        (48, None, 3, 1, False),
        (95, None, 3, 1, False),
        (96, None, 7, 2, True),
        (224, None, 7, 2, True),
        (64, False, 7, 2, True),
        (224, True, 3, 1, False),
    ],
)
def test_small_stem_below_96_pixels(image_size, small_stem, kernel, stride, pooled):
    with torch.device("meta"):
        model = build_model(
            "resnet50", num_classes=7, image_size=image_size, small_stem=small_stem
        )
    assert model.conv1.kernel_size == (kernel, kernel)
    assert model.conv1.stride == (stride, stride)
    assert isinstance(model.maxpool, nn.MaxPool2d) == pooled


@pytest.mark.parametrize("channels", [1, 3])
def test_stem_takes_the_input_channels(channels):
    with torch.device("meta"):
        for name in ("resnet50", "resnet101_icbam"):
            for image_size in (48, 224):
                model = build_model(
                    name, num_classes=7, in_channels=channels, image_size=image_size
                )
                assert model.conv1.in_channels == channels


def test_imagenet_weights_load_before_the_modules_are_added(offline_torch_hub):
    saved = tvm.resnet50().state_dict()
    weights = tvm.ResNet50_Weights.DEFAULT
    torch.save(saved, offline_torch_hub / os.path.basename(weights.url))
    model = build_model("resnet50_icbam", num_classes=6, in_channels=1, pretrained="imagenet")
    torch.testing.assert_close(model.conv1.weight, saved["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer3[2].conv2.weight, saved["layer3.2.conv2.weight"])
    assert model.fc.out_features == 6


def test_pretrained_option_reaches_the_loader_and_fails_clearly_offline(offline_torch_hub):
    with pytest.raises(PretrainedWeightsUnavailable, match="resnet101"):
        build_model("resnet101", num_classes=7, pretrained="imagenet")
