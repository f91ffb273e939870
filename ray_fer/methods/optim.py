"""Optimizers, learning-rate schedules and the explicit L2 term that methods share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ray_fer.config import Config


def weight_tensors(module: nn.Module) -> list[nn.Parameter]:
    """Parameters the explicit L2 term covers: weight matrices and conv kernels (ndim > 1).

    Biases and normalisation scales/shifts (1-D) are excluded, as in Deep-Emotion's λ‖w‖²
    over weights (Minaee & Abdolrashidi 2019) and common practice: penalising them only
    shifts activations.
    """
    return [p for p in module.parameters() if p.requires_grad and p.ndim > 1]


def l2_penalty(weights: list[nn.Parameter]) -> torch.Tensor:
    """Σ‖w‖² over ``weights`` (computed in float32)."""
    return torch.stack([w.float().pow(2).sum() for w in weights]).sum()


def fused_on_cuda(params: list[nn.Parameter]) -> bool | None:
    """An optimizer's ``fused`` argument for ``params``: True (torch's fused CUDA kernel)
    when all of them are on CUDA, else None (torch's default). It launches fewer kernels
    per step than the default (foreach); on ResNet-50 at 224 px the difference was within
    noise (benchmarks/RESULTS.md#resnet-50-at-224-px)."""
    return (bool(params) and all(p.is_cuda for p in params)) or None


def make_optimizer(cfg: Config, params: Iterator[nn.Parameter] | list) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optim`` over ``params`` (fused when they are on CUDA)."""
    o = cfg.optim
    params = list(params)
    fused = fused_on_cuda(params)
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov
                               and o.momentum > 0, weight_decay=o.weight_decay, fused=fused)
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
               fused=fused)


def lr_factor(cfg: Config, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Step → multiplier of ``optim.lr`` for the configured schedule.

    A closed form of the step index, clamped at the end, rather than torch's OneCycleLR:
    the exact number of steps of a streamed epoch is known only approximately in advance,
    and OneCycleLR fails when stepped past its total.
    """
    o = cfg.optim
    total = max(1, total_steps)
    warm = int(o.warmup * total)
    low = o.final_lr_ratio

    def cosine(t: float, start: float, end: float) -> float:
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    if o.schedule == "onecycle":
        def factor(step: int) -> float:
            if step < warm:
                return cosine(1 - step / warm, 1.0, 0.04)
            return cosine((step - warm) / max(1, total - warm), 1.0, low)
    elif o.schedule == "cosine":
        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return cosine((step - warm) / max(1, total - warm), 1.0, low)
    elif o.schedule == "step":
        def factor(step: int) -> float:
            return o.gamma ** (step // (o.step_epochs * max(1, steps_per_epoch)))
    else:
        def factor(step: int) -> float:
            return 1.0
    return factor


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step LambdaLR following ``cfg.optim.schedule`` over ``cfg.train.epochs``."""
    factor = lr_factor(cfg, cfg.train.epochs * steps_per_epoch, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def one_optimizer(cfg: Config, modules: dict[str, nn.Module], steps_per_epoch: int
                  ) -> tuple[dict, dict]:
    """``optim``'s optimizer and schedule over the ``model`` network (one of each)."""
    opt = make_optimizer(cfg, modules["model"].parameters())
    return {"model": opt}, {"model": make_scheduler(cfg, opt, steps_per_epoch)}
