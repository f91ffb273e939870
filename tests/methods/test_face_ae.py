"""The face-generating autoencoder, its loss, the ResNet-34 regressor and re-rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ray_fer.data.synthetic import SyntheticFaces
from ray_fer.methods.face_ae.model import (
    FaceAutoencoder,
    VaRegressor,
    ae_loss,
    face_ae,
    face_ae_regressor,
    render_va_grid,
    rerender_batch,
)
from ray_fer.methods.face_ae.steps import FaceAeOptions, ae_step, same_subject_pairs


def test_paper_sized_autoencoder_shapes_and_ranges():
    torch.manual_seed(0)
    ae = face_ae(num_classes=7, in_channels=3, image_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        z, v, a = ae.encode(x)
        out = ae.decode(z, v, a)
    assert z.shape == (2, 32) and v.shape == a.shape == (2,)
    assert (ae.in_channels, ae.image_size) == (3, 64)
    assert v.abs().max() < 1 and a.abs().max() < 1
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, ae(x))


def test_image_size_must_survive_four_poolings():
    with pytest.raises(ValueError, match="multiple of 16"):
        FaceAutoencoder(3, 40)


def test_ae_loss_weights_va_errors_of_i_and_reconstructs_j_from_i_appearance():
    torch.manual_seed(0)
    ae = FaceAutoencoder(3, 32, width=8).eval()
    img_i, img_j = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    va_i, va_j = torch.tensor([[0.5, -0.2], [0.1, 0.3]]), torch.tensor([[-0.4, 0.6], [0.0, 0.0]])
    with torch.no_grad():
        loss = ae_loss(ae, img_i, img_j, va_i, va_j, lambda_v=0.25, lambda_a=2.0)
        z, v, a = ae.encode(img_i)
        recon = ((ae.decode(z, va_j[:, 0], va_j[:, 1]) - img_j) ** 2).mean()
    assert loss.valence.item() == pytest.approx(((v - va_i[:, 0]) ** 2).mean().item())
    assert loss.arousal.item() == pytest.approx(((a - va_i[:, 1]) ** 2).mean().item())
    assert loss.reconstruction.item() == pytest.approx(recon.item())
    assert loss.total.item() == pytest.approx(
        0.25 * loss.valence.item() + 2.0 * loss.arousal.item() + recon.item())
    with torch.no_grad():
        weighted = ae_loss(ae, img_i, img_j, va_i, va_j, lambda_v=0.25, lambda_a=2.0,
                           recon_weight=3.0)
    assert weighted.total.item() == pytest.approx(
        0.25 * loss.valence.item() + 2.0 * loss.arousal.item() + 3.0 * recon.item())


def synthetic_pairs(size: int) -> dict[str, torch.Tensor]:
    """Same-person pairs from the embedded synthetic set: 3 people x 2 expressions."""
    reader = SyntheticFaces(subjects=3, images_per_subject=2, size=size, splits="none")
    items = list(reader.scan(Path(".")))
    images = np.stack([reader.load(Path("."), item) for item in items]) / 255.0
    x = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2)
    va = torch.tensor([(item.valence, item.arousal) for item in items], dtype=torch.float32)
    i, j = same_subject_pairs(np.array([item.subject_id for item in items]),
                              va[:, 0].numpy(), va[:, 1].numpy(), np.random.default_rng(0))
    assert len(i) == len(items)  # every face has a partner: its other expression
    return {"image_i": x[i], "image_j": x[j], "va_i": va[i], "va_j": va[j]}


def test_short_training_reconstructs_a_same_person_pair_better_than_at_init():
    torch.manual_seed(0)
    batch = synthetic_pairs(size=32)
    ae = FaceAutoencoder(3, 32, width=8)
    config = FaceAeOptions()

    def pair_reconstruction() -> float:
        ae.eval()
        with torch.no_grad():
            loss = ae_loss(ae, batch["image_i"], batch["image_j"], batch["va_i"], batch["va_j"])
        ae.train()
        return loss.reconstruction.item()

    at_init = pair_reconstruction()
    optimizer = torch.optim.Adam(ae.parameters(), lr=1e-3)
    for _ in range(100):
        ae_step(ae, optimizer, batch, config)
    assert pair_reconstruction() < 0.3 * at_init


def test_va_regressor_is_resnet34_with_two_outputs_and_resizes_its_input():
    torch.manual_seed(0)
    regressor = face_ae_regressor(num_classes=7, in_channels=3, image_size=64).eval()
    assert [len(s) for s in (regressor.network.layer1, regressor.network.layer2,
                             regressor.network.layer3, regressor.network.layer4)] == [3, 4, 6, 3]
    small = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = regressor(small)
        resized = regressor(F.interpolate(small, size=(64, 64), mode="bilinear",
                                          align_corners=False))
    assert out.shape == (2, 2)
    assert torch.allclose(out, resized)
    assert VaRegressor(1, 64).network.conv1.in_channels == 1


def test_rerender_batch_draws_unit_disk_targets_and_resizes():
    torch.manual_seed(0)
    ae = FaceAutoencoder(3, 32, width=8).train()
    images = torch.rand(5, 3, 32, 32)
    rendered, targets = rerender_batch(ae, images, np.random.default_rng(7), output_size=48)
    assert rendered.shape == (5, 3, 48, 48) and targets.shape == (5, 2)
    assert (targets.norm(dim=1) <= 1).all()
    assert ae.training  # mode restored
    again, same_targets = rerender_batch(ae, images, np.random.default_rng(7), output_size=48)
    assert torch.equal(targets, same_targets) and torch.allclose(rendered, again)
    with torch.no_grad():
        ae.eval()
        z, _, _ = ae.encode(images)
        direct = ae.decode(z, targets[:, 0], targets[:, 1])
    assert torch.allclose(rerender_batch(ae, images, np.random.default_rng(7))[0], direct)


def test_va_grid_renders_one_face_at_every_grid_point():
    torch.manual_seed(0)
    ae = FaceAutoencoder(3, 32, width=8).train()
    face = torch.rand(3, 32, 32)
    grid = render_va_grid(ae, face)
    assert grid.shape == (7, 9, 3, 32, 32)  # the paper's Fig. 2: 7 arousals x 9 valences
    assert ae.training
    ae.eval()
    with torch.no_grad():
        z, _, _ = ae.encode(face[None])
        corner = ae.decode(z, torch.tensor([0.4]), torch.tensor([-0.3]))
    assert torch.allclose(grid[0, -1], corner[0], atol=1e-6)  # a = -0.3 row, v = 0.4 column
