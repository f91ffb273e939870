"""Stage-1 pairing (the pair bank) and the stage-2 regression steps and resampling of the
face-generating autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ray_fer.data.targets import va_grid_groups
from ray_fer.methods.face_ae.model import FaceAutoencoder
from ray_fer.methods.face_ae.steps import (
    FaceAeOptions,
    PairBank,
    pair_batch,
    regression_step,
    rerendered_regression_step,
    resample_counts,
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
        FaceAeOptions(lambda_v=-1.0)
    with pytest.raises(ValueError, match="recon_weight > 0"):
        FaceAeOptions(recon_weight=0.0)


def bank_rows():
    """Row ids (unsorted), faces whose pixels encode their row, subjects and V/A: "a" has
    3 rows (two share one expression), "b" 2, "c" 1, "" (unknown) 2, and one "b" row
    without V/A."""
    keys = np.array([70, 10, 50, 20, 60, 30, 40, 80, 90])
    subjects = np.array(["a", "a", "a", "b", "b", "c", "", "", "b"])
    valence = np.array([0.1, 0.1, 0.5, 0.2, -0.3, 0.0, 0.4, -0.4, np.nan])
    arousal = np.array([0.0, 0.0, 0.0, 0.4, 0.1, 0.0, 0.2, 0.3, np.nan])
    faces = torch.tensor(keys, dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 4, 4)
    return keys, faces.contiguous(), subjects, valence, arousal


def test_pair_bank_keeps_rows_with_a_partner_of_the_same_known_person():
    keys, faces, subjects, valence, arousal = bank_rows()
    bank = PairBank(keys, faces, subjects, valence, arousal, seed=0)
    # c has nobody; the unknown subject is not one person; the NaN row has no V/A.
    assert bank.keys.tolist() == [10, 20, 50, 60, 70]
    assert bank.find(torch.tensor([50, 30, 10, 99, 40])).tolist() == [2, -1, 0, -1, -1]
    subject_of = dict(zip(keys.tolist(), subjects.tolist(), strict=True))
    va_of = {k: (v, a) for k, v, a in zip(keys.tolist(), valence, arousal, strict=True)}
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(len(bank)).repeat(50)
    for partners in (bank.partner(positions), bank.partner(positions, generator)):
        for p, q in zip(bank.keys[positions].tolist(), bank.keys[partners].tolist(),
                        strict=True):
            assert subject_of[p] == subject_of[q] and va_of[p] != va_of[q]
    drawn = bank.keys[bank.partner(positions[positions == 2], generator)]
    assert set(drawn.tolist()) == {10, 70}  # random draws reach every valid partner
    assert bank.state_dict() == {}  # pixels never go into checkpoints


def test_pair_batch_pairs_streamed_rows_with_bank_faces():
    keys, faces, subjects, valence, arousal = bank_rows()
    bank = PairBank(keys, faces, subjects, valence, arousal, seed=0)
    streamed = torch.full((3, 1, 8, 8), -1.0)  # stream range [-1, 1], another size
    streamed[1] = 1.0
    pairs = pair_batch(bank, streamed, torch.tensor([30, 20, 60]))
    assert pairs["image_i"].shape == (2, 1, 4, 4)  # row 30 (subject c) has no partner
    assert pairs["image_i"][0].eq(1.0).all() and pairs["image_i"][1].eq(0.0).all()
    assert pairs["image_j"][:, 0, 0, 0].mul(255).round().tolist() == [60, 20]
    assert torch.allclose(pairs["va_i"], torch.tensor([[0.2, 0.4], [-0.3, 0.1]]))
    assert torch.allclose(pairs["va_j"], torch.tensor([[-0.3, 0.1], [0.2, 0.4]]))
    assert pair_batch(bank, streamed[:1], torch.tensor([30])) is None


def imbalanced_va(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """900 rows near neutral, 60 in one far cell, 40 spread out, 5 without V/A."""
    rng = np.random.default_rng(seed)
    valence = np.concatenate([rng.uniform(-0.1, 0.1, 900), np.full(60, 0.85),
                              rng.uniform(-1, 1, 40), np.full(5, np.nan)])
    arousal = np.concatenate([rng.uniform(-0.1, 0.1, 900), np.full(60, 0.85),
                              rng.uniform(-1, 1, 40), np.full(5, np.nan)])
    return valence, arousal


@pytest.mark.parametrize("threshold", [10, 100])
def test_under_sampling_caps_every_grid_cell_at_the_threshold(threshold):
    valence, arousal = imbalanced_va()
    counts = resample_counts(valence, arousal, "under", threshold, 10, seed=0)
    labelled = np.isfinite(valence)
    groups = va_grid_groups(valence[labelled], arousal[labelled], 10)
    per_cell = np.bincount(groups, weights=counts[labelled])
    sizes = np.bincount(groups)
    assert set(counts.tolist()) <= {0, 1} and counts[~labelled].sum() == 0
    assert (per_cell == np.minimum(sizes, threshold)).all()


@pytest.mark.parametrize("threshold", [10, 100])
def test_over_sampling_fills_every_grid_cell_up_to_the_threshold(threshold):
    valence, arousal = imbalanced_va()
    counts = resample_counts(valence, arousal, "over", threshold, 10, seed=0)
    labelled = np.isfinite(valence)
    groups = va_grid_groups(valence[labelled], arousal[labelled], 10)
    per_cell = np.bincount(groups, weights=counts[labelled])
    sizes = np.bincount(groups)
    occupied = sizes > 0
    assert (counts[labelled] >= 1).all() and counts[~labelled].sum() == 0
    assert (per_cell[occupied] == np.maximum(sizes[occupied], threshold)).all()
    assert counts.max() <= -(-threshold // sizes[occupied].min())  # whole copies + rest


def test_original_and_rerender_use_every_labelled_row_once():
    valence, arousal = imbalanced_va()
    for balance in ("none", "rerender"):
        counts = resample_counts(valence, arousal, balance, 10, 10, seed=0)
        assert counts.tolist() == [1] * 1000 + [0] * 5
    with pytest.raises(ValueError, match="balance"):
        resample_counts(valence, arousal, "smote", 10, 10, seed=0)
