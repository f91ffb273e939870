"""CAF's steps: each update touches only its own networks, and a short run learns V/A."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_fer.data.targets import emotion_threshold
from ray_fer.methods.caf.model import CafModel
from ray_fer.methods.caf.steps import (
    CafOptions,
    critic_step,
    encoder_step,
    make_optimizers,
    train_step,
)
from ray_fer.methods.metrics import va_metrics

SIZE = 16


def gradient_faces(n: int, seed: int) -> dict[str, torch.Tensor]:
    """A tiny regression problem: 1xSIZExSIZE images whose horizontal slope is the valence
    and vertical slope the arousal, plus noise; (v, a) uniform in the unit disk."""
    rng = np.random.default_rng(seed)
    r, theta = np.sqrt(rng.uniform(0, 1, n)), rng.uniform(0, 2 * np.pi, n)
    v, a = r * np.cos(theta), r * np.sin(theta)
    grid = np.linspace(-1, 1, SIZE)
    xx, yy = np.meshgrid(grid, grid)
    images = v[:, None, None] * xx + a[:, None, None] * yy + rng.normal(0, 0.1, (n, SIZE, SIZE))
    return {"image": torch.tensor(images[:, None], dtype=torch.float32),
            "valence": torch.tensor(v, dtype=torch.float32),
            "arousal": torch.tensor(a, dtype=torch.float32)}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = CafModel(1, encoder="small_cnn", small_cnn_width=8).train()
    config = CafOptions(lr=1e-3)
    batch = gradient_faces(32, seed=1)
    threshold = emotion_threshold(batch["valence"].numpy(), batch["arousal"].numpy())
    return model, make_optimizers(model, config), batch, threshold, config


def test_critic_step_changes_only_the_critic(setup):
    model, optimizers, batch, threshold, config = setup
    before = snapshot(model)
    stats = critic_step(model, optimizers, batch, threshold, config)
    keys = changed(before, model)
    assert stats["critic_skipped"] == 0
    assert keys and all(k.startswith("critic.") for k in keys)
    assert "critic.lagrange" in keys  # the Fisher-IPM multiplier moved
    assert any(k.startswith("critic.net.") for k in keys)


def test_encoder_step_changes_only_encoder_and_regressor(setup):
    model, optimizers, batch, threshold, config = setup
    critic_step(model, optimizers, batch, threshold, config)  # critic grads now populated
    before = snapshot(model)
    stats = encoder_step(model, optimizers, batch, threshold, config)
    keys = changed(before, model)
    assert "adv_loss" in stats
    assert not any(k.startswith("critic.") for k in keys)
    assert any(k.startswith("encoder.") for k in keys)
    assert any(k.startswith("regressor.") for k in keys)
    assert all(p.requires_grad for p in model.critic.parameters())  # unfrozen afterwards


def test_critic_step_skips_a_batch_without_weak_rows(setup):
    model, optimizers, batch, _, config = setup
    before = snapshot(model)
    stats = critic_step(model, optimizers, batch, threshold=-1.0, config=config)
    assert stats["critic_skipped"] == 1 and not changed(before, model)


def test_baseline_trains_without_critic(setup):
    _, _, batch, threshold, config = setup
    baseline = CafModel(1, encoder="small_cnn", small_cnn_width=8, baseline=True).train()
    optimizers = make_optimizers(baseline, config)
    assert optimizers.critic is None
    stats = train_step(baseline, optimizers, batch, threshold, config)
    assert set(stats) == {"va_loss", "loss"}
    with pytest.raises(ValueError, match="baseline"):
        critic_step(baseline, optimizers, batch, threshold, config)


def test_rows_without_va_are_left_out_of_the_loss(setup):
    model, optimizers, batch, threshold, config = setup
    batch = dict(batch, valence=batch["valence"].clone())
    batch["valence"][:4] = float("nan")
    stats = encoder_step(model, optimizers, batch, threshold, config)
    assert torch.isfinite(stats["loss"])


def test_optimizer_state_round_trips_for_resume(setup):
    model, optimizers, batch, threshold, config = setup
    train_step(model, optimizers, batch, threshold, config)
    fresh = make_optimizers(model, config)
    fresh.load_state_dict(optimizers.state_dict())
    assert fresh.schedulers[0].last_epoch == 1
    assert fresh.encoder.state_dict()["state"].keys() == optimizers.encoder.state_dict()[
        "state"].keys()


def test_short_caf_run_beats_predicting_the_mean():
    torch.manual_seed(0)
    train, held_out = gradient_faces(512, seed=2), gradient_faces(256, seed=3)
    model = CafModel(1, encoder="small_cnn", small_cnn_width=8).train()
    config = CafOptions(lr=1e-3, critic_steps=2)
    optimizers = make_optimizers(model, config)
    threshold = emotion_threshold(train["valence"].numpy(), train["arousal"].numpy())
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        for rows in torch.randperm(512, generator=generator).split(32):
            batch = {k: v[rows] for k, v in train.items()}
            train_step(model, optimizers, batch, threshold, config)
    model.eval()
    with torch.no_grad():
        pred = model(held_out["image"]).numpy()
    target = torch.stack([held_out["valence"], held_out["arousal"]], 1).numpy()
    train_mean = np.array([[train["valence"].mean().item(), train["arousal"].mean().item()]])
    model_rmse = va_metrics(pred, target)["mean_rmse"]
    mean_rmse = va_metrics(np.repeat(train_mean, len(target), 0), target)["mean_rmse"]
    assert model_rmse < 0.5 * mean_rmse  # measured 0.13-0.21 over three seeds
