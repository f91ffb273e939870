"""The classification steps every classifier method shares."""

from __future__ import annotations

import pytest
import torch

from ray_fer.data.info import DataInfo
from ray_fer.methods.base import Sums
from ray_fer.methods.registry import get_method, method_config
from ray_fer.train import epoch


def _step(batch: dict, smoothing: float = 0.0) -> Sums:
    cfg = method_config("deep_emotion", flags={
        "data.uri": "unused", "loss.label_smoothing": smoothing})
    info = DataInfo(class_names=[str(i) for i in range(7)], image_size=48, channels=1)
    method = get_method(cfg.method)
    state = epoch.build_state(method, cfg, info, torch.device("cpu"), 1)
    state.train_modules = dict(state.modules)
    for module in state.modules.values():
        module.train()
    torch.manual_seed(0)  # the same dropout masks in the steps compared
    return method.train_batch(state, batch)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_mixed_batch_trains_and_scores_against_its_mix_target(smoothing):
    """With ``mix_target`` present, loss and training accuracy follow it, not ``label``:
    a batch whose mix targets are the one-hots of other labels gives the sums of a batch
    labelled with those (label smoothing applying alike)."""
    images = torch.rand(8, 1, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.arange(8) % 7
    others = (labels + 3) % 7
    mixed = _step({"image": images, "label": labels,
                   "mix_target": torch.nn.functional.one_hot(others, 7).float()}, smoothing)
    relabelled = _step({"image": images, "label": others}, smoothing)
    plain = _step({"image": images, "label": labels}, smoothing)
    for key in ("loss_sum", "correct", "count"):
        torch.testing.assert_close(mixed[key], relabelled[key])
    assert not torch.equal(mixed["loss_sum"], plain["loss_sum"])
