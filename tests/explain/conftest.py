"""Short-trained checkpoints and faces shared by the explain tests (trained once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.trained import synthetic_faces, train_checkpoint

from ray_fer.explain.run import Subject, model_inputs
from ray_fer.export import Trained, load_trained


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A checkpoint of Deep-Emotion (with its spatial transformer) trained briefly on
    synthetic faces."""
    return str(train_checkpoint(tmp_path_factory.mktemp("de") / "checkpoint_epoch-0000"))


@pytest.fixture(scope="session")
def classifier(checkpoint) -> Trained:
    return load_trained(checkpoint)


@pytest.fixture(scope="session")
def va_model(tmp_path_factory) -> Trained:
    """CAF (small CNN encoder, narrow) trained briefly to regress valence and arousal."""
    folder = train_checkpoint(tmp_path_factory.mktemp("caf") / "ckpt", "caf", steps=10,
                              small_cnn_width=8)
    return load_trained(str(folder))


@pytest.fixture(scope="session")
def de_subject(classifier) -> Subject:
    return Subject(classifier.model, classifier.meta.task, classifier.meta.outputs,
                   classifier.explain_layer)


@pytest.fixture(scope="session")
def va_subject(va_model) -> Subject:
    return Subject(va_model.model, va_model.meta.task, va_model.meta.outputs,
                   va_model.explain_layer)


@pytest.fixture(scope="session")
def faces() -> tuple[np.ndarray, np.ndarray]:
    """Six synthetic faces (uint8, 48 px gray) of different categories, and their labels."""
    images, labels, _, _ = synthetic_faces()
    pick = np.arange(0, 42, 7)[:6] + np.arange(6)
    return images[pick], labels[pick]


@pytest.fixture
def images(faces) -> torch.Tensor:
    """The faces as the model's normalised input."""
    return model_inputs(faces[0], 48, 1)
