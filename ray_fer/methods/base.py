"""What a method's steps work on: the live state of a run, the sums they return, and the
figures a method draws once a run has finished.

The training loop builds a :class:`TrainState` from a method's networks and optimizers and
hands it, with each batch, to the method's steps. Steps return *sums* (detached tensors
such as ``loss_sum`` and ``count``) that the loop accumulates on the device and
all-reduces over workers, so every metric follows from summed sufficient statistics
(counts, confusion matrices, Σx, Σxy ...) and covers each row exactly once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ray_fer.config import Config
from ray_fer.data.info import DataInfo

Sums = dict[str, torch.Tensor]
#: What a model predicts: class logits, or valence and arousal.
Task = Literal["classify", "va"]
TASKS: tuple[Task, ...] = ("classify", "va")
#: The outputs of a V/A model, in order.
VA_OUTPUTS = ("valence", "arousal")


@dataclass
class TrainState:
    """The live objects of one worker's run.

    ``modules`` are the plain networks (what checkpoints hold and evaluation runs);
    ``train_modules`` the same wrapped for training (torch.compile, DDP) under the same names.
    """

    cfg: Config
    info: DataInfo
    device: torch.device
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    train_modules: dict[str, nn.Module] = field(default_factory=dict)
    epoch: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when configured; a no-op on CPU (keeps CPU runs exact)."""
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def lr(self) -> float:
        """Current learning rate of the first optimizer (reported per epoch)."""
        opt = next(iter(self.optimizers.values()))
        return float(opt.param_groups[0]["lr"])


@dataclass(frozen=True)
class RunFigures:
    """What a method draws once a run has finished: ``files`` (name → bytes) go into the
    run folder, ``images`` (tag → (H, W, 3) uint8) into its TensorBoard."""

    files: dict[str, bytes] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
