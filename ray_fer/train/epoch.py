"""The pieces of a worker's epoch: its state built, its batches fitted to the model, one
epoch of training steps across workers, every validation row evaluated once.

Uneven shards: :func:`ray_fer.data.stream.data_config` hands workers whole blocks, so their
batch counts may differ by a block's worth. Before each training step the workers agree,
over a small gloo group on the CPU (no GPU sync), whether *every* worker still has a batch;
the epoch ends for all at the first worker that runs out. DDP's collectives therefore always
match; the rows a worker had left are not trained on in that epoch (at most about one
block per worker; the seeded block order changes which). ``Join`` was the alternative, but
it shadows only DDP's own collectives and would not cover a method's extra ones (CAF's
critic and encoder steps), nor the BatchNorm buffer broadcasts of several modules.
Evaluation runs on the plain (non-DDP) modules with no collective per batch, so every
validation row is seen once and the sums are all-reduced at the end.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ray_fer.config import Config, ConfigError
from ray_fer.data import stream
from ray_fer.data.device_cache import CacheRecorder, DeviceCache
from ray_fer.data.info import DataInfo
from ray_fer.methods.base import Sums, TrainState
from ray_fer.methods.registry import Method
from ray_fer.models.layers.inputs import fit_images
from ray_fer.train.collectives import accumulate, all_have, all_min
from ray_fer.train.init_from import init_modules


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def wrap_module(module: nn.Module, cfg: Config, device: torch.device, world: int) -> nn.Module:
    """``module`` as it trains: in DDP across ``world`` > 1 workers, compiled on a GPU if
    configured (as CUDA graphs where :func:`cuda_graphs_on`)."""
    trainable = any(p.requires_grad for p in module.parameters())
    if world > 1 and trainable:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile and device.type == "cuda":
        # Static shapes: training drops its last partial batch, and the STN's affine_grid
        # does not trace with dynamic shapes.
        module = torch.compile(module, dynamic=False,
                               mode="reduce-overhead" if cuda_graphs_on(cfg, device) else None)
    return module


def cuda_graphs_on(cfg: Config, device: torch.device) -> bool:
    """Whether training steps replay as CUDA graphs: ``train.cuda_graphs`` with
    ``train.compile``, on a GPU, in a one-worker run (DDP's all-reduce is not captured)."""
    return (cfg.train.cuda_graphs and cfg.train.compile and device.type == "cuda"
            and cfg.resources.workers == 1)


def train_step(method: Method, state: TrainState, batch: dict) -> Sums:
    """One optimisation step of ``method``: its sums over ``batch``."""
    if cuda_graphs_on(state.cfg, state.device):
        # Marks a new iteration for the CUDA graphs, so that replaying them may reuse the
        # memory of the last step's outputs (which the step's sums no longer reference).
        torch.compiler.cudagraph_mark_step_begin()
    return method.train_batch(state, batch)


def fit_batch(batch: dict, info: DataInfo, channels_last: bool = False) -> dict:
    """``batch`` with its images converted to the model's size and channels if needed."""
    images = batch["image"]
    if images.shape[1] != info.channels or images.shape[-1] != info.image_size:
        images = fit_images(images, info.image_size, info.channels)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch["image"] = images
    return batch


def fitted(it: Iterator[dict], info: DataInfo, channels_last: bool) -> Iterator[dict]:
    """The batches of ``it``, each through :func:`fit_batch`."""
    for batch in it:
        yield fit_batch(batch, info, channels_last)


def epoch_batches(cfg: Config, info: DataInfo, device: torch.device, source: stream.Source,
                   epoch: int, rank: int, channels_last: bool,
                   recorder: CacheRecorder | None) -> Iterator[dict]:
    """The training batches of ``epoch`` from ``source`` (lazy: nothing is read yet)."""
    return fitted(stream.iter_train_batches(
        source, batch_size=cfg.train.batch_size, device=device, augment=cfg.augment,
        seed=cfg.train.seed, epoch=epoch, channels_last=channels_last, drop_last=True,
        shuffle_buffer=cfg.data.shuffle_buffer, rank=rank, recorder=recorder,
        num_classes=info.num_classes, soft_labels=cfg.loss.soft_labels),
        info, channels_last)


def train_epoch(method: Method, state: TrainState, source: stream.Source,
                 batches: Iterator[dict], group) -> tuple[Sums, int, float]:
    """Sums and steps of one epoch over ``batches`` (read from ``source``), and the
    wall-clock time its first step was launched."""
    cfg = state.cfg
    for module in state.modules.values():
        module.train()
    sums: Sums = {}
    first_step_at = math.nan
    if isinstance(source, DeviceCache):
        # Each worker knows its batch count: agree on the smallest once, not every step.
        steps = all_min(source.num_batches(cfg.train.batch_size, drop_last=True), group)
        for step, batch in enumerate(itertools.islice(batches, steps)):
            first_step_at = time.time() if step == 0 else first_step_at
            accumulate(sums, train_step(method, state, batch))
        return sums, _some(steps, cfg), first_step_at
    steps = 0
    while True:
        batch = next(batches, None)
        if not all_have(batch is not None, group):
            break
        first_step_at = time.time() if steps == 0 else first_step_at
        accumulate(sums, train_step(method, state, batch))
        steps += 1
    # Drain what this worker has left so Ray Data completes the epoch's execution (its
    # execution index, hence the next epoch's block order, advances only then).
    for _ in batches:
        pass
    return sums, _some(steps, cfg), first_step_at


def _some(steps: int, cfg: Config) -> int:
    """``steps``, unless the epoch had none (every worker agrees on the count)."""
    if steps == 0:
        # Workers receive whole blocks of the train split; one may get less than a batch.
        raise ConfigError(
            f"config key 'train.batch_size': an epoch ran no training step: a worker received "
            f"fewer than {cfg.train.batch_size} training rows ({cfg.resources.workers} "
            "workers share the train split in whole blocks of rows); lower "
            "train.batch_size or resources.workers")
    return steps


@torch.no_grad()
def evaluate_shard(method: Method, state: TrainState, shard: stream.Source,
                   batch_size: int | None = None, channels_last: bool = False,
                   recorder: CacheRecorder | None = None,
                   sample: list[dict[str, torch.Tensor]] | None = None) -> Sums:
    """The method's summed eval statistics over every row of ``shard`` (no collectives).

    An empty ``sample`` list receives a copy of the first batch's images and labels (to
    explain them).
    """
    for module in state.modules.values():
        module.eval()
    sums: Sums = {}
    batches = stream.iter_eval_batches(shard,
                                       batch_size=batch_size or state.cfg.train.eval_batch_size,
                                       device=state.device, channels_last=channels_last,
                                       recorder=recorder)
    for batch in fitted(batches, state.info, channels_last):
        if sample is not None and not sample:
            sample.append({k: batch[k].detach().clone() for k in ("image", "label")
                           if k in batch})
        accumulate(sums, method.eval_batch(state, batch))
    return sums


def build_state(method: Method, cfg: Config, info: DataInfo, device: torch.device,
                steps_per_epoch: int) -> TrainState:
    """Seeded modules (fresh, or from ``model.init``), optimizers and schedulers of
    ``method`` on ``device``."""
    seed_everything(cfg.train.seed)
    modules = method.build_modules(cfg, info)
    if cfg.model.init:
        init_modules(modules, cfg, info)
    for module in modules.values():
        module.to(device)
        if device.type == "cuda" and cfg.train.channels_last:
            module.to(memory_format=torch.channels_last)
    optimizers, schedulers = method.build_optimizers(cfg, modules, steps_per_epoch)
    return TrainState(cfg=cfg, info=info, device=device, modules=modules,
                      optimizers=optimizers, schedulers=schedulers)
