"""The face-generating autoencoder's training steps (stage 1) and the V/A regressor's
(stage 2, and the imbalanced / under- / over-sampled baselines), and both stages' options.

Stage 1 batches are same-person pairs: ``image_i``, ``image_j`` (N, C, S, S) in [0, 1] and
``va_i``, ``va_j`` (N, 2); :func:`same_subject_pairs` draws them from a split's subject
ids and :class:`PairBank` holds the partner faces a streamed row is paired with. Stage 2
re-renders each batch's faces at V/A uniform in the unit disk
(:func:`ray_fer.methods.face_ae.model.rerender_batch`) and fits the regressor to those V/A
with L_VA = MSE_v + MSE_a; the baselines fit the same regressor to the original faces, every
row once, under-sampled or over-sampled over a V/A grid (:func:`resample_counts`).

Value ranges: the data stream hands faces normalised to [-1, 1] (what the regressor
reads, in training and in evaluation alike); the autoencoder reads and renders [0, 1]
(:func:`unit_range`, :func:`stream_range` convert).

This module needs torch and numpy only (no Ray): ``benchmarks/face_ae_tables.py`` runs
the same steps in a plain loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_fer.data.targets import oversample_indices, undersample_indices, va_grid_groups
from ray_fer.methods.face_ae.model import FaceAutoencoder, ae_loss, rerender_batch

Stats = dict[str, torch.Tensor]
Balance = Literal["none", "under", "over", "rerender"]
BALANCES: tuple[Balance, ...] = ("none", "under", "over", "rerender")


@dataclass(frozen=True)
class FaceAeOptions:
    """Stage 1's loss weights (the paper: lambda_v = lambda_a = 0.5, reconstruction 1);
    all searchable. The learning rate is the run's ``optim.lr``."""

    lambda_v: float = 0.5
    lambda_a: float = 0.5
    recon_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.lambda_v < 0 or self.lambda_a < 0 or self.recon_weight <= 0:
            raise ValueError(f"FaceAeOptions needs lambdas >= 0 and recon_weight > 0, got {self}")


@dataclass(frozen=True)
class RegressOptions:
    """Stage 2's training data (``options.*`` of ``face_ae_regressor``).

    ``threshold`` is T_u for ``under`` and T_o for ``over``; ``grid_cells`` the cells per
    axis of the V/A grid over [-1, 1]^2 that defines the groups (the paper does not give
    its grid). ``ae_checkpoint``: a stage-1 checkpoint folder, for ``rerender``.
    """

    balance: Balance = "none"
    threshold: int = 500
    grid_cells: int = 10
    ae_checkpoint: str = ""

    def __post_init__(self) -> None:
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {list(BALANCES)}, got {self.balance!r}")
        if self.threshold < 1 or self.grid_cells < 1:
            raise ValueError("threshold and grid_cells must be >= 1")
        if (self.balance == "rerender") != bool(self.ae_checkpoint):
            raise ValueError("balance=rerender needs ae_checkpoint (a stage-1 face_ae "
                             "checkpoint folder), and ae_checkpoint applies only to it")


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """Stream-normalised faces in [-1, 1] → the autoencoder's [0, 1]."""
    return (images + 1) / 2


def stream_range(images: torch.Tensor) -> torch.Tensor:
    """Autoencoder faces in [0, 1] → the stream's [-1, 1]."""
    return images * 2 - 1


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) → (N, C, size, size), bilinear (antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=images.shape[-1] > size)


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


class PairBank(nn.Module):
    """The faces of one split that have a same-person partner, keyed by row id, so a
    streamed row can be paired on the device: :meth:`find` its position, draw a
    :meth:`partner`, read the partner's :meth:`faces`.

    Everything is held in non-persistent buffers: it moves with ``.to(device)`` and is
    never written into checkpoints (it is rebuilt from the shards). ``faces`` are uint8
    (N, C, S, S) at the autoencoder's size; rows without V/A or without a subject id are
    left out.
    """

    def __init__(self, keys: np.ndarray, faces: torch.Tensor, subjects: np.ndarray,
                 valence: np.ndarray, arousal: np.ndarray, seed: int) -> None:
        super().__init__()
        keys = np.asarray(keys, dtype=np.int64)
        valence = np.asarray(valence, dtype=np.float32)
        arousal = np.asarray(arousal, dtype=np.float32)
        subjects = np.asarray(subjects).astype(str)
        # An empty subject id means "unknown", not one person shared by those rows.
        labelled = np.flatnonzero(np.isfinite(valence) & np.isfinite(arousal) & (subjects != ""))
        first, second = same_subject_pairs(subjects[labelled], valence[labelled],
                                           arousal[labelled], np.random.default_rng(seed))
        first, second = labelled[first], labelled[second]
        order = np.argsort(keys[first], kind="stable")
        rows = first[order]
        # A partner has a partner too (the row that chose it), so it is in the bank.
        position = np.full(len(keys), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        _, subject_code = np.unique(subjects[rows], return_inverse=True)
        members = np.argsort(subject_code, kind="stable")
        group_size = np.bincount(subject_code)
        group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]])

        def buffer(name: str, value: np.ndarray | torch.Tensor) -> None:
            self.register_buffer(name, torch.as_tensor(value), persistent=False)

        buffer("keys", keys[rows])
        buffer("images", faces[torch.from_numpy(rows)])
        buffer("va", np.stack([valence[rows], arousal[rows]], axis=1))
        buffer("fallback", position[second[order]])
        buffer("members", members.astype(np.int64))
        buffer("group_start", group_start[subject_code].astype(np.int64))
        buffer("group_size", group_size[subject_code].astype(np.int64))

    def __len__(self) -> int:
        return int(self.keys.numel())

    def find(self, keys: torch.Tensor) -> torch.Tensor:
        """Bank positions of row ``keys`` (-1 where a row has no partner)."""
        if len(self) == 0:
            return torch.full_like(keys, -1)
        at = torch.searchsorted(self.keys, keys).clamp_max(len(self) - 1)
        return torch.where(self.keys[at] == keys, at, -1)

    def partner(self, positions: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """A partner per position: with ``generator``, a random face of the same person
        (the pairing fixed at construction where the draw has the same V/A); without,
        that fixed pairing (deterministic, for validation)."""
        if generator is None:
            return self.fallback[positions]
        u = torch.rand(len(positions), generator=generator, device=generator.device)
        offset = (u.to(positions.device) * self.group_size[positions]).long()
        offset = torch.minimum(offset, self.group_size[positions] - 1)
        drawn = self.members[self.group_start[positions] + offset]
        same = (self.va[drawn] == self.va[positions]).all(1)
        return torch.where(same, self.fallback[positions], drawn)

    def faces(self, positions: torch.Tensor) -> torch.Tensor:
        """Float faces (N, C, S, S) in [0, 1] at ``positions``."""
        return self.images[positions].float() / 255


def pair_batch(bank: PairBank, images: torch.Tensor, keys: torch.Tensor,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
    """Stage-1 pairs of a streamed batch: each row that has a partner in ``bank`` (its
    ``images`` in [-1, 1], any size) becomes ``image_i`` (at the bank's size, in [0, 1])
    and its partner ``image_j``; None when no row of the batch has one."""
    positions = bank.find(keys)
    found = positions >= 0
    if not found.any():
        return None
    positions = positions[found]
    partners = bank.partner(positions, generator)
    return {"image_i": resize(unit_range(images[found]), bank.images.shape[-1]),
            "image_j": bank.faces(partners),
            "va_i": bank.va[positions], "va_j": bank.va[partners]}


def ae_step(ae: FaceAutoencoder, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
            config: FaceAeOptions) -> Stats:
    """One stage-1 update with L_AE on a batch of same-person pairs."""
    loss = ae_loss(ae, batch["image_i"], batch["image_j"], batch["va_i"], batch["va_j"],
                   config.lambda_v, config.lambda_a, config.recon_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return {"loss": loss.total.detach(), "valence_mse": loss.valence.detach(),
            "arousal_mse": loss.arousal.detach(),
            "pair_mse": loss.reconstruction.detach()}


def regression_step(regressor: nn.Module, optimizer: torch.optim.Optimizer,
                    images: torch.Tensor, targets: torch.Tensor) -> Stats:
    """One regressor update with L_VA = MSE_v + MSE_a on (images, (N, 2) targets)."""
    loss = F.mse_loss(regressor(images).float(), targets, reduction="none").mean(0).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach()}


def rerendered_regression_step(regressor: nn.Module, ae: FaceAutoencoder,
                               optimizer: torch.optim.Optimizer, images: torch.Tensor,
                               rng: np.random.Generator, output_size: int | None = None) -> Stats:
    """One stage-2 update: the batch's faces (in [-1, 1], any size) re-rendered by the
    frozen ``ae`` at uniform V/A, returned to [-1, 1] at ``output_size``, then
    :func:`regression_step` on them."""
    rendered, targets = rerender_batch(ae, resize(unit_range(images), ae.image_size), rng)
    rendered = stream_range(rendered)
    if output_size is not None:
        rendered = resize(rendered, output_size)
    return regression_step(regressor, optimizer, rendered, targets)


def resample_counts(valence: np.ndarray, arousal: np.ndarray, balance: Balance,
                    threshold: int, cells_per_axis: int, seed: int) -> np.ndarray:
    """How many times each row enters a stage-2 epoch: ``none`` and ``rerender`` once,
    ``under`` at most ``threshold`` random rows per V/A grid cell (T_u), ``over`` every
    cell smaller than ``threshold`` replicated up to it (T_o). Rows without V/A: 0."""
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
    valence, arousal = np.asarray(valence), np.asarray(arousal)
    labelled = np.flatnonzero(np.isfinite(valence) & np.isfinite(arousal))
    counts = np.zeros(len(valence), dtype=np.int64)
    if balance in ("none", "rerender"):
        counts[labelled] = 1
        return counts
    groups = va_grid_groups(valence[labelled], arousal[labelled], cells_per_axis)
    pick = undersample_indices if balance == "under" else oversample_indices
    counts[labelled] = np.bincount(pick(groups, threshold, seed), minlength=len(labelled))
    return counts
