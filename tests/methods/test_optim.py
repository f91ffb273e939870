"""The optimizers methods share: torch's defaults on CPU, fused kernels on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ray_fer.config import Config
from ray_fer.methods.optim import make_optimizer


def _optimizer(name: str, device: str) -> torch.optim.Optimizer:
    cfg = Config.from_dict({"method": "deep_emotion", "optim": {"optimizer": name}})
    return make_optimizer(cfg, nn.Linear(4, 2).to(device).parameters())


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_on_cpu_keep_torch_defaults(name):
    """Fused kernels are CUDA-only here: on CPU the optimizer must not ask for them."""
    assert not _optimizer(name, "cpu").defaults["fused"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_over_cuda_parameters_are_fused(name):
    opt = _optimizer(name, "cuda")
    assert opt.defaults["fused"] is True
    loss = sum(p.sum() for g in opt.param_groups for p in g["params"])
    loss.backward()
    opt.step()  # the fused kernel accepts these settings (nesterov SGD, decoupled decay)
