"""CAF's losses (Kim & Song, AAAI 2021): the V/A loss, the critic's contrastive loss with
its adaptive margin, and the encoder's adversarial loss.

Notation: P = strong-emotion rows (r >= delta_r), Q = weak ones; f = the critic's outputs
on the encoder's features. As in the authors' code, the first m = min(|P|, |Q|) rows of
each are used and row i is paired with row m-1-i of the other list (P_i with P_{m-1-i}
as the positive pair, P_i with Q_{m-1-i} as the negative pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_EPS = 1e-8


def pearson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-column Pearson correlation of (N, D) tensors: 0 with finite gradients for a
    constant column (the epsilon sits inside the square root, whose gradient at 0 is
    infinite)."""
    dp = pred - pred.mean(0)
    dt = target - target.mean(0)
    cov = (dp * dt).mean(0)
    return cov / (dp.pow(2).mean(0) * dt.pow(2).mean(0) + _EPS).sqrt()


def concordance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-column concordance correlation coefficient (Lin's CCC) of (N, D) tensors."""
    mp, mt = pred.mean(0), target.mean(0)
    cov = ((pred - mp) * (target - mt)).mean(0)
    var_p = (pred - mp).pow(2).mean(0)
    var_t = (target - mt).pow(2).mean(0)
    return 2 * cov / (var_p + var_t + (mp - mt).pow(2) + _EPS)


def va_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    w_mse: float = 1.0,
    w_pcc: float = 0.5,
    w_ccc: float = 0.5,
) -> torch.Tensor:
    """L_AV = w_mse * (MSE_v + MSE_a) + w_pcc * (1 - mean PCC) + w_ccc * (1 - mean CCC)
    on (N, 2) predictions and targets; the defaults are the authors' (their code sums the
    two dimensions' squared errors and averages the correlations)."""
    mse = F.mse_loss(pred, target, reduction="none").mean(0).sum()
    return (w_mse * mse + w_pcc * (1 - pearson(pred, target).mean())
            + w_ccc * (1 - concordance(pred, target).mean()))


def gaussian_channel_mi(x: torch.Tensor, y: torch.Tensor, variance: float = 0.2) -> torch.Tensor:
    """Per-row mutual-information estimate between critic outputs x (strong) and y (weak),
    the authors' estimator: y is read as the output of a Gaussian channel (``variance``)
    fed with x, against a channel fed with equiprobable +-1, averaged over output units:

        MI_i = mean_d log[ N(y | x, s^2) / (0.5 N(y | -1, s^2) + 0.5 N(y | +1, s^2)) ].
    """
    log_p = -(y - x).pow(2) / (2 * variance)
    log_minus = -(y + 1).pow(2) / (2 * variance)
    log_plus = -(y - 1).pow(2) / (2 * variance)
    log_mix = torch.logaddexp(log_minus, log_plus) + math.log(0.5)
    return (log_p - log_mix).mean(-1)


@torch.no_grad()
def aknn_confidence(features: torch.Tensor, strong: torch.Tensor, confidence: float,
                    max_k: int) -> torch.Tensor:
    """The confidence term Delta_i = c / sqrt(k_i) of each row, with k_i the adaptive
    neighbourhood size of the AKNN rule (Balsubramani et al., NeurIPS 2019) that the
    authors' code applies to the critic outputs: the smallest k <= ``max_k`` whose k
    nearest other rows have a strong/weak label share deviating from 1/2 by more than
    c / sqrt(k) (``max_k`` when none does)."""
    rows = features.shape[0]
    k_max = max(1, min(max_k, rows - 1))
    distances = torch.cdist(features.float(), features.float())
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(k_max, dim=1, largest=False).indices
    sizes = torch.arange(1, k_max + 1, device=features.device, dtype=torch.float32)
    share_strong = strong[neighbours].float().cumsum(1) / sizes
    admissible = (share_strong - 0.5).abs() > confidence / sizes.sqrt()
    first = torch.where(admissible.any(1), admissible.float().argmax(1) + 1,
                        torch.full((rows,), k_max, device=features.device))
    return confidence / first.float().sqrt()


@dataclass(frozen=True)
class CriticLoss:
    """The critic objective and what the step needs besides it."""

    loss: torch.Tensor
    #: 1 - Omega, the Fisher-IPM constraint (detached): the Lagrange multiplier's gradient.
    constraint: torch.Tensor
    margin: torch.Tensor
    mutual_information: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


def critic_contrastive_loss(
    f_strong: torch.Tensor,
    f_weak: torch.Tensor,
    lagrange: torch.Tensor,
    *,
    margin_max: float = 2.5,
    confidence: float = 0.7,
    knn_k: int = 10,
    rho: float = 1e-6,
    mi_variance: float = 0.2,
) -> CriticLoss:
    """L_c, contrastive loss + variational divergence minimisation, on critic outputs of m
    strong and m weak rows ((m, d) each), as the authors' code computes it:

        alpha_i = clamp(MI(f(P_i), f(Q_{m-1-i})), 0, margin_max) + Delta_i
        d+_i = ||f(P_i) - f(P_{m-1-i})||^2
        d-_i = max(0, alpha_i - ||f(P_i) - f(Q_{m-1-i})||^2)
        Omega = (E[(d+)^2] + E[(d-)^2]) / 2
        L_c = E[d+] + E[d-] + lambda * (1 - Omega) - rho / 2 * (1 - Omega)^2

    i.e. strong features pulled together and weak ones pushed at least the adaptive
    margin alpha away from them, under the Fisher-IPM second-moment constraint Omega = 1
    held by an augmented Lagrangian (Mroueh & Sercu, Fisher GAN, 2017); after the critic
    update, lambda <- lambda + rho * (1 - Omega). The margin (mutual information MI of
    :func:`gaussian_channel_mi`, confidence Delta of :func:`aknn_confidence`) is detached:
    it sets how far apart the groups must be, it is not something to shrink.
    """
    if f_strong.shape != f_weak.shape or f_strong.ndim != 2 or len(f_strong) == 0:
        raise ValueError(f"need equal, non-empty (m, d) critic outputs, got "
                         f"{tuple(f_strong.shape)} and {tuple(f_weak.shape)}")
    partner_strong, partner_weak = f_strong.flip(0), f_weak.flip(0)
    with torch.no_grad():
        mi = gaussian_channel_mi(f_strong, partner_weak, mi_variance)
        labels = torch.cat([torch.ones(len(f_strong), dtype=torch.bool, device=f_strong.device),
                            torch.zeros(len(f_weak), dtype=torch.bool, device=f_weak.device)])
        delta = aknn_confidence(torch.cat([f_strong, f_weak]), labels, confidence, knn_k)
        margin = mi.clamp(0.0, margin_max) + delta[: len(f_strong)]
    positive = (f_strong - partner_strong).pow(2).sum(1)
    negative = F.relu(margin - (f_strong - partner_weak).pow(2).sum(1))
    omega = 0.5 * positive.pow(2).mean() + 0.5 * negative.pow(2).mean()
    constraint = 1 - omega
    loss = positive.mean() + negative.mean() + lagrange * constraint - rho / 2 * constraint**2
    return CriticLoss(loss=loss, constraint=constraint.detach(), margin=margin.mean(),
                      mutual_information=mi.mean(), positive=positive.detach().mean(),
                      negative=negative.detach().mean())


def adversarial_loss(f_weak: torch.Tensor) -> torch.Tensor:
    """L_adv = -E_Q[f]: with the critic frozen, the encoder raises the critic's value of
    weak-emotion features (the Fisher-IPM generator objective the authors use), making
    them harder to tell from strong ones."""
    return -f_weak.mean()
