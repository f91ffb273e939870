"""The face-generating autoencoder's training steps (stage 1) and the V/A regressor's
(stage 2, and the imbalanced / under- / over-sampled baselines).

Stage 1 batches are same-person pairs: ``image_i``, ``image_j`` (N, C, S, S) in [0, 1] and
``va_i``, ``va_j`` (N, 2); :func:`same_subject_pairs` draws them from a split's subject
ids. Stage 2 re-renders each batch's faces at V/A uniform in the unit disk
(:func:`ray_fer.models.face_ae.rerender_batch`) and fits the regressor to those V/A with
L_VA = MSE_v + MSE_a; the baselines fit the same regressor to the original faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_fer.models.face_ae import FaceAutoencoder, ae_loss, rerender_batch

Stats = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FaceAeConfig:
    """The paper's settings (Adam 1e-4, lambda_v = lambda_a = 0.5); lambdas searchable."""

    lambda_v: float = 0.5
    lambda_a: float = 0.5
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.lambda_v < 0 or self.lambda_a < 0 or self.lr <= 0:
            raise ValueError(f"FaceAeConfig needs lambdas >= 0 and lr > 0, got {self}")


def same_subject_pairs(subjects: np.ndarray, valence: np.ndarray, arousal: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (i, j) of one person with different expressions: every row i that has
    one gets a random partner j of the same subject whose (v, a) differs."""
    subjects = np.asarray(subjects)
    va = np.stack([np.asarray(valence), np.asarray(arousal)], axis=1)
    first, second = [], []
    for subject in np.unique(subjects):
        rows = np.flatnonzero(subjects == subject)
        for i in rows:
            partners = rows[(va[rows] != va[i]).any(axis=1)]
            if len(partners):
                first.append(i)
                second.append(rng.choice(partners))
    return np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)


def ae_step(ae: FaceAutoencoder, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
            config: FaceAeConfig) -> Stats:
    """One stage-1 update with L_AE on a batch of same-person pairs."""
    loss = ae_loss(ae, batch["image_i"], batch["image_j"], batch["va_i"], batch["va_j"],
                   config.lambda_v, config.lambda_a)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return {"loss": loss.total.detach(), "valence_mse": loss.valence.detach(),
            "arousal_mse": loss.arousal.detach(),
            "reconstruction_mse": loss.reconstruction.detach()}


def regression_step(regressor: nn.Module, optimizer: torch.optim.Optimizer,
                    images: torch.Tensor, targets: torch.Tensor) -> Stats:
    """One regressor update with L_VA = MSE_v + MSE_a on (images, (N, 2) targets)."""
    loss = F.mse_loss(regressor(images), targets, reduction="none").mean(0).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach()}


def rerendered_regression_step(regressor: nn.Module, ae: FaceAutoencoder,
                               optimizer: torch.optim.Optimizer, images: torch.Tensor,
                               rng: np.random.Generator, output_size: int | None = None) -> Stats:
    """One stage-2 update: the batch's faces re-rendered at uniform V/A, then
    :func:`regression_step` on them."""
    rendered, targets = rerender_batch(ae, images, rng, output_size)
    return regression_step(regressor, optimizer, rendered, targets)
