"""Compiled training steps (:func:`epoch.wrap_module`, :func:`epoch.train_step`): compiled on
GPU only, CUDA graphs only where they can run, and replayed as CUDA graphs they train
exactly as the compiled step does."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from ray_fer.data.info import DataInfo
from ray_fer.methods.registry import get_method, method_config
from ray_fer.train import epoch


def test_a_compiled_config_leaves_the_module_eager_on_cpu():
    """The packaged efficient backbones compile on GPU; a CPU run must not pay for it."""
    cfg = method_config("mobilenet_v2_dense")
    assert cfg.train.compile and cfg.train.cuda_graphs
    module = nn.Linear(2, 2)
    assert epoch.wrap_module(module, cfg, torch.device("cpu"), 1) is module


@pytest.mark.parametrize(("sets", "device", "on"), [
    ([], "cuda", True),
    (["train.compile=false"], "cuda", False),
    (["resources.workers=2"], "cuda", False),
    ([], "cpu", False),
    (["train.cuda_graphs=false"], "cuda", False),
])
def test_cuda_graphs_apply_to_compiled_one_worker_gpu_runs_only(sets, device, on):
    """So the packaged recipe (compile + CUDA graphs) runs as it is with DDP, on CPU or
    with compile turned off."""
    cfg = method_config("efficientnet_b0_dense", sets=sets)
    assert epoch.cuda_graphs_on(cfg, torch.device(device)) is on


def _losses(cuda_graphs: bool, batches: list[dict]) -> list[float]:
    # No dropout (its masks would differ between the two), a constant learning rate high
    # enough that each step changes the loss visibly.
    cfg = method_config("mobilenet_v2_dense", flags={
        "train.cuda_graphs": cuda_graphs, "train.batch_size": len(batches[0]["label"]),
        "model.options.dropout": 0.0, "optim.schedule": "step", "optim.step_epochs": 100,
        "optim.lr": 3e-3})
    method = get_method(cfg.method)
    info = DataInfo(class_names=[str(i) for i in range(7)], image_size=48, channels=1)
    device = torch.device("cuda")
    state = epoch.build_state(method, cfg, info, device, steps_per_epoch=len(batches))
    state.train_modules = {k: epoch.wrap_module(m, cfg, device, 1)
                           for k, m in state.modules.items()}
    for module in state.modules.values():
        module.train()
    return [float(epoch.train_step(method, state, b)["loss_sum"]) for b in batches]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_steps_train_as_the_compiled_steps():
    generator = torch.Generator().manual_seed(0)
    batch = {"image": (torch.rand(32, 1, 48, 48, generator=generator) * 2 - 1).cuda()
             .contiguous(memory_format=torch.channels_last),
             "label": torch.randint(0, 7, (32,), generator=generator).cuda()}
    batches = [batch] * 8
    compiled = _losses(False, batches)
    counters.clear()
    graphs = _losses(True, batches)
    assert counters["inductor"]["cudagraph_skips"] == 0  # the steps ran as CUDA graphs
    # The replays see each step's updated parameters: the loss on the repeated batch falls,
    # step by step as in the compiled run.
    assert graphs[-1] < 0.8 * graphs[0]
    torch.testing.assert_close(graphs, compiled, rtol=2e-2, atol=1e-2)
