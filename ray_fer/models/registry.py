"""The model contract: every model by name, its factory and its default input.

``MODELS`` is immutable; adding a model is one entry. A factory is ``"module:callable"``,
imported only when that model is built, and is called as
``factory(*, num_classes, in_channels, image_size, **options)``; its remaining keyword
parameters are the model's options (what configs and search spaces may set).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from torch import nn

Task = Literal["classify", "va"]
TASKS: tuple[Task, ...] = ("classify", "va")
REQUIRED_ARGUMENTS = ("num_classes", "in_channels", "image_size")


@dataclass(frozen=True)
class ModelDefaults:
    """What a model is built for unless told otherwise."""

    image_size: int
    in_channels: int
    task: Task = "classify"
    family: str = ""
    #: Whether a run trains it from scratch (an ensemble is assembled from trained runs).
    trainable: bool = True


@dataclass(frozen=True)
class ModelSpec:
    factory: str
    defaults: ModelDefaults


MODELS: MappingProxyType[str, ModelSpec] = MappingProxyType(
    {
        "deep_emotion": ModelSpec(
            "ray_fer.models.deep_emotion:deep_emotion", ModelDefaults(48, 1, family="deep_emotion")
        ),
        "deep_emotion_wide": ModelSpec(
            "ray_fer.models.deep_emotion:deep_emotion_wide",
            ModelDefaults(48, 1, family="deep_emotion"),
        ),
        "vgg_bn": ModelSpec("ray_fer.models.vgg:vgg_bn", ModelDefaults(48, 1, family="vgg")),
        "mobilenet_v2_dense": ModelSpec(
            "ray_fer.models.dense_head:mobilenet_v2_dense",
            ModelDefaults(48, 1, family="dense_head"),
        ),
        "efficientnet_b0_dense": ModelSpec(
            "ray_fer.models.dense_head:efficientnet_b0_dense",
            ModelDefaults(48, 1, family="dense_head"),
        ),
        "efficientnet_b2_dense": ModelSpec(
            "ray_fer.models.dense_head:efficientnet_b2_dense",
            ModelDefaults(48, 1, family="dense_head"),
        ),
        # ResNet-18 for small faces (3x3 stem, no max-pool below 96 px), as FER2013's
        # from-scratch ResNets are trained (Pramerdorfer & Kampel 2016; WuJie1010's code).
        "resnet18": ModelSpec(
            "ray_fer.models.resnet_icbam:resnet18", ModelDefaults(48, 1, family="resnet")
        ),
        "resnet50": ModelSpec(
            "ray_fer.models.resnet_icbam:resnet50", ModelDefaults(224, 3, family="resnet")
        ),
        "resnet101": ModelSpec(
            "ray_fer.models.resnet_icbam:resnet101", ModelDefaults(224, 3, family="resnet")
        ),
        "resnet50_icbam": ModelSpec(
            "ray_fer.models.resnet_icbam:resnet50_icbam", ModelDefaults(224, 3, family="resnet")
        ),
        "resnet101_icbam": ModelSpec(
            "ray_fer.models.resnet_icbam:resnet101_icbam", ModelDefaults(224, 3, family="resnet")
        ),
        # Trained classifiers combined (python -m ray_fer.ensemble builds its checkpoints).
        "ensemble": ModelSpec(
            "ray_fer.models.ensemble:ensemble",
            ModelDefaults(48, 1, family="ensemble", trainable=False),
        ),
        "caf": ModelSpec("ray_fer.models.caf:caf", ModelDefaults(48, 1, "va", "caf")),
        "caf_baseline": ModelSpec(
            "ray_fer.models.caf:caf_baseline", ModelDefaults(48, 1, "va", "caf")
        ),
        "face_ae": ModelSpec(
            "ray_fer.models.face_ae:face_ae", ModelDefaults(64, 3, "va", "face_ae")
        ),
        "face_ae_regressor": ModelSpec(
            "ray_fer.models.face_ae:face_ae_regressor", ModelDefaults(224, 3, "va", "face_ae")
        ),
    }
)

def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        ) from None


def _factory(spec: ModelSpec) -> Callable[..., nn.Module]:
    module, attr = spec.factory.split(":")
    return getattr(importlib.import_module(module), attr)


def model_defaults(name: str) -> ModelDefaults:
    """The default image size, channels, task and family of model ``name``."""
    return _spec(name).defaults


def model_names(task: Task | None = None) -> tuple[str, ...]:
    """Registered model names (sorted), only those of ``task`` when given."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return tuple(
        sorted(name for name, spec in MODELS.items() if task in (None, spec.defaults.task))
    )


def model_options(name: str) -> dict[str, Any]:
    """The options model ``name`` accepts beyond the required arguments, with defaults."""
    parameters = inspect.signature(_factory(_spec(name))).parameters
    return {
        key: parameter.default
        for key, parameter in parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and key not in REQUIRED_ARGUMENTS
    }


def option_types(name: str) -> dict[str, Any]:
    """The annotated type of each option of model ``name`` (``Any`` where unannotated)."""
    factory = _factory(_spec(name))
    hints = typing.get_type_hints(getattr(factory, "func", factory))  # a functools.partial
    return {key: hints.get(key, Any) for key in model_options(name)}


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int | None = None,
    image_size: int | None = None,
    **options: Any,
) -> nn.Module:
    """Model ``name`` for ``num_classes`` outputs; None sizes take the model's defaults.

    Raises ValueError for an unknown name or invalid sizes, TypeError naming any option
    the model does not accept.
    """
    spec = _spec(name)
    in_channels = spec.defaults.in_channels if in_channels is None else in_channels
    image_size = spec.defaults.image_size if image_size is None else image_size
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    return _factory(spec)(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options
    )
