import dataclasses

import pytest
import torch
from torch import nn

from ray_fer.models import MODELS, build_model, model_defaults, model_names, model_options

CLASSIFIERS = (
    "deep_emotion",
    "deep_emotion_wide",
    "vgg_bn",
    "resnet18",
    "ensemble",
    "mobilenet_v2_dense",
    "efficientnet_b0_dense",
    "efficientnet_b2_dense",
    "resnet50",
    "resnet101",
    "resnet50_icbam",
    "resnet101_icbam",
)
# The backbones at reduced sizes keep CPU tests fast; everything else at its default size.
REDUCED = {
    "mobilenet_v2_dense": {"image_size": 32},
    "efficientnet_b0_dense": {"image_size": 32},
    "efficientnet_b2_dense": {"image_size": 32},
    "resnet50": {"image_size": 32, "small_stem": False},
    "resnet101": {"image_size": 32, "small_stem": False},
    "resnet50_icbam": {"image_size": 32, "small_stem": False},
    "resnet101_icbam": {"image_size": 32, "small_stem": False},
    # Two members of other families and input sizes: the ensemble converts its input.
    "ensemble": {"members": [{"model": "deep_emotion"},
                             {"model": "vgg_bn", "image_size": 32, "channels": 3}],
                 "weights": [3, 1]},
}
# One model per family: the layout code paths are shared within a family.
CHANNELS_LAST = ("deep_emotion", "vgg_bn", "mobilenet_v2_dense", "resnet50_icbam")


def _test_build(name: str, channels: int, num_classes: int = 5) -> tuple[nn.Module, int]:
    options = dict(REDUCED.get(name, {}))
    size = options.pop("image_size", model_defaults(name).image_size)
    model = build_model(
        name, num_classes=num_classes, in_channels=channels, image_size=size, **options
    )
    return model, size


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", model_names("classify"))
def test_every_classifier_runs_forward_and_backward(name, channels):
    torch.manual_seed(0)
    model, size = _test_build(name, channels)
    x = torch.rand(2, channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 5)
    nn.functional.cross_entropy(logits, torch.tensor([0, 4])).backward()
    assert x.grad.abs().sum() > 0, "no gradient reaches the input, hence the first layer"
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name", CHANNELS_LAST)
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    model, size = _test_build(name, 3)
    model.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_classifiers_are_registered_with_their_defaults():
    assert set(CLASSIFIERS) <= set(model_names("classify"))
    assert not set(CLASSIFIERS) & set(model_names("va"))
    assert model_names() == tuple(sorted(MODELS))
    assert all(model_defaults(name).task == "va" for name in model_names("va"))
    assert model_defaults("deep_emotion").image_size == 48
    assert model_defaults("deep_emotion").in_channels == 1
    assert model_defaults("resnet50_icbam").image_size == 224
    assert model_defaults("resnet50_icbam").family == "resnet"


def test_none_sizes_take_the_model_defaults():
    model = build_model("vgg_bn", num_classes=7)
    assert model.features[0].in_channels == model_defaults("vgg_bn").in_channels
    assert model.classifier[1].in_features == 512 * 3 * 3  # 48 px after four 2x poolings


@pytest.mark.parametrize("name", model_names())
def test_every_registered_factory_resolves(name):
    assert isinstance(model_options(name), dict)


def test_options_are_listed_with_defaults():
    assert model_options("deep_emotion_wide") == {"width": 64, "hidden": 256, "dropout": 0.5}
    assert "cbam_reduction" in model_options("resnet50_icbam")
    assert "cbam_reduction" not in model_options("resnet50")


def test_unknown_name_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown model 'deep_emotions'.*deep_emotion_wide"):
        build_model("deep_emotions", num_classes=7)
    with pytest.raises(ValueError, match="resnet50_icbam"):
        model_defaults("resnet")


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="unknown option.*stem_stride.*accepts: hidden, dropout"):
        build_model("deep_emotion", num_classes=7, stem_stride=1)


@pytest.mark.parametrize(
    "arguments",
    [
        {"num_classes": 0},
        {"num_classes": 7, "in_channels": 2},
        {"num_classes": 7, "image_size": 0},
    ],
)
def test_invalid_sizes_are_rejected(arguments):
    with pytest.raises(ValueError):
        build_model("deep_emotion", **arguments)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="unknown task"):
        model_names("regress")


def test_registry_is_immutable():
    with pytest.raises(TypeError):
        MODELS["mine"] = MODELS["vgg_bn"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_defaults("vgg_bn").image_size = 96
