"""Models by name: see :mod:`ray_fer.models.registry` (the model contract)."""

from ray_fer.models.registry import (
    MODELS,
    ModelDefaults,
    ModelSpec,
    build_model,
    model_defaults,
    model_names,
    model_options,
)

__all__ = [
    "MODELS",
    "ModelDefaults",
    "ModelSpec",
    "build_model",
    "model_defaults",
    "model_names",
    "model_options",
]
