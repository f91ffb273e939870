"""Stage-1 pairing and the stage-2 regression steps of the face-generating autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ray_fer.models.face_ae import FaceAutoencoder
from ray_fer.train.face_ae_steps import (
    FaceAeConfig,
    regression_step,
    rerendered_regression_step,
    same_subject_pairs,
)


def test_pairs_join_one_subject_with_a_different_expression():
    subjects = np.array(["a", "a", "b", "b", "b", "c"])
    valence = np.array([0.1, 0.5, 0.2, 0.2, -0.3, 0.0])
    arousal = np.array([0.0, 0.0, 0.4, 0.4, 0.1, 0.0])
    i, j = same_subject_pairs(subjects, valence, arousal, np.random.default_rng(0))
    assert sorted(i.tolist()) == [0, 1, 2, 3, 4]  # "c" has nobody to pair with
    assert (subjects[i] == subjects[j]).all()
    assert ((valence[i] != valence[j]) | (arousal[i] != arousal[j])).all()
    partner = dict(zip(i.tolist(), j.tolist(), strict=True))
    assert partner[2] == partner[3] == 4  # rows 2 and 3 share an expression


def test_regression_step_minimises_summed_va_mse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    images = torch.randn(16, 1, 2, 2)
    targets = images.flatten(1) @ torch.randn(4, 2)  # a linear problem the model can solve
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    expected = ((model(images) - targets) ** 2).mean(0).sum().item()
    first = regression_step(model, optimizer, images, targets)["loss"].item()
    assert first == pytest.approx(expected)
    for _ in range(50):
        last = regression_step(model, optimizer, images, targets)["loss"].item()
    assert last < 0.5 * first


def test_rerendered_step_trains_the_regressor_and_leaves_the_autoencoder_alone():
    torch.manual_seed(0)
    ae = FaceAutoencoder(3, 32, width=8)
    regressor = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    optimizer = torch.optim.Adam(regressor.parameters(), lr=1e-3)
    before_ae = {k: v.clone() for k, v in ae.state_dict().items()}
    before_reg = {k: v.clone() for k, v in regressor.state_dict().items()}
    stats = rerendered_regression_step(regressor, ae, optimizer, torch.rand(4, 3, 32, 32),
                                       np.random.default_rng(0), output_size=16)
    assert torch.isfinite(stats["loss"])
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in before_ae.items())
    assert not all(torch.equal(v, regressor.state_dict()[k]) for k, v in before_reg.items())


def test_config_rejects_negative_weights():
    with pytest.raises(ValueError, match="lambdas >= 0"):
        FaceAeConfig(lambda_v=-1.0)
