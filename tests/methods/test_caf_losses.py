"""CAF's losses against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_fer.methods.caf import losses as L
from ray_fer.methods.metrics import va_metrics

PRED = torch.tensor([[1.0, -1.0], [2.0, 0.0], [3.0, 1.0]])
TARGET = torch.tensor([[1.0, -1.0], [3.0, 1.0], [2.0, 3.0]])


def test_differentiable_pcc_and_ccc_match_the_metrics():
    # by hand: PCC (1/2, 1), CCC (1/2, 8/13) (see tests/train/test_metrics.py)
    assert L.pearson(PRED, TARGET).tolist() == pytest.approx([0.5, 1.0], abs=1e-6)
    assert L.concordance(PRED, TARGET).tolist() == pytest.approx([0.5, 8 / 13], abs=1e-6)
    metrics = va_metrics(PRED.numpy(), TARGET.numpy())
    assert metrics["arousal_ccc"] == pytest.approx(8 / 13)


def test_va_loss_weights_mse_pcc_and_ccc():
    # MSE per dim: 2/3 and 5/3 -> sum 7/3; mean PCC 3/4; mean CCC (1/2 + 8/13)/2
    expected = 7 / 3 + 0.5 * (1 - 0.75) + 0.5 * (1 - (0.5 + 8 / 13) / 2)
    assert L.va_loss(PRED, TARGET).item() == pytest.approx(expected, abs=1e-5)
    assert L.va_loss(PRED, TARGET, 0.0, 1.0, 0.0).item() == pytest.approx(0.25, abs=1e-5)
    assert L.va_loss(TARGET, TARGET).item() == pytest.approx(0.0, abs=1e-5)


def test_va_loss_has_gradients_even_for_constant_predictions():
    pred = torch.zeros(4, 2, requires_grad=True)
    loss = L.va_loss(pred, torch.randn(4, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_gaussian_channel_mi_of_a_clean_binary_signal_is_log_2():
    # x = y = 1: log N(1|1) - log(0.5 N(1|-1) + 0.5 N(1|1)) = -log(0.5 + 0.5 e^-10)
    mi = L.gaussian_channel_mi(torch.ones(1, 3), torch.ones(1, 3), variance=0.2)
    assert mi.item() == pytest.approx(-math.log(0.5 + 0.5 * math.exp(-10)), abs=1e-6)
    assert mi.item() == pytest.approx(math.log(2), abs=1e-4)


def test_aknn_confidence_is_c_over_sqrt_adaptive_k():
    # two tight, far-apart groups: the two nearest neighbours already agree -> k = 2
    features = torch.tensor([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    strong = torch.tensor([True, True, True, False, False, False])
    delta = L.aknn_confidence(features, strong, confidence=0.7, max_k=5)
    assert delta.tolist() == pytest.approx([0.7 / math.sqrt(2)] * 6)
    # with c = 2 no share can deviate from 1/2 by more than c / sqrt(k) -> k = max_k
    delta = L.aknn_confidence(features, strong, confidence=2.0, max_k=4)
    assert delta.tolist() == pytest.approx([2.0 / 2] * 6)


def test_critic_contrastive_loss_by_hand():
    f_strong = torch.tensor([[0.0], [1.0]], requires_grad=True)
    f_weak = torch.tensor([[0.5], [3.0]])
    # pairs: P0-P1 and P1-P0 -> d+ = (1, 1); P0-Q1 (dist^2 9), P1-Q0 (dist^2 0.25).
    # AKNN on (0, 1 | 0.5, 3): neighbour labels of both strong rows are (w, s, w), never
    # admissible -> k = 3, Delta = 0.7 / sqrt(3); margin_max ~ 0 removes the MI term.
    delta = 0.7 / math.sqrt(3)
    negatives = np.array([0.0, delta - 0.25])
    omega = 0.5 * 1.0 + 0.5 * np.mean(negatives**2)
    result = L.critic_contrastive_loss(f_strong, f_weak, torch.tensor(2.0), margin_max=1e-12,
                                       rho=0.0)
    assert result.positive.item() == pytest.approx(1.0)
    assert result.negative.item() == pytest.approx(negatives.mean(), abs=1e-6)
    assert result.constraint.item() == pytest.approx(1 - omega, abs=1e-6)
    expected = 1.0 + negatives.mean() + 2.0 * (1 - omega)
    assert result.loss.item() == pytest.approx(expected, abs=1e-6)
    with_rho = L.critic_contrastive_loss(f_strong, f_weak, torch.tensor(2.0), margin_max=1e-12,
                                         rho=0.5)
    assert with_rho.loss.item() == pytest.approx(expected - 0.25 * (1 - omega) ** 2, abs=1e-6)
    result.loss.backward()
    assert f_strong.grad is not None and torch.isfinite(f_strong.grad).all()


def test_critic_loss_margin_includes_clamped_mutual_information():
    f = torch.ones(3, 1)
    result = L.critic_contrastive_loss(f, f.clone(), torch.tensor(0.0), margin_max=0.5,
                                       confidence=2.0)
    # MI = log 2 > 0.5 is clamped to 0.5; with c = 2 no k is admissible -> k = 5 (knn_k
    # capped at rows - 1), Delta = 2 / sqrt(5)
    assert result.margin.item() == pytest.approx(0.5 + 2.0 / math.sqrt(5), abs=1e-5)


def test_adversarial_loss_is_minus_the_mean_critic_value():
    assert L.adversarial_loss(torch.tensor([[1.0], [3.0]])).item() == -2.0


def test_critic_loss_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="equal, non-empty"):
        L.critic_contrastive_loss(torch.zeros(2, 1), torch.zeros(3, 1), torch.tensor(0.0))
