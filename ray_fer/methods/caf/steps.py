"""CAF's training steps: the critic update and the encoder (adversarial + V/A) update.

One iteration (:func:`train_step`) runs ``critic_steps`` critic updates, then one encoder
update, then steps the LR schedulers, mirroring the authors' alternation. The strong/weak
split of a batch uses the threshold delta_r computed once on the training set
(:func:`ray_fer.data.targets.emotion_threshold` with ``CafOptions.split``).

Batches are dicts with ``image`` (N, C, H, W) float, ``valence`` and ``arousal`` (N,) float
tensors; rows whose V/A is NaN take part in neither loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ray_fer.data.targets import SplitMethod
from ray_fer.methods.caf.losses import adversarial_loss, critic_contrastive_loss, va_loss
from ray_fer.methods.caf.model import CafModel
from ray_fer.methods.optim import fused_on_cuda

Stats = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CafOptions:
    """CAF's training hyperparameters (defaults: the authors' code); all searchable."""

    margin_max: float = 2.5
    confidence: float = 0.7
    knn_k: int = 10
    mi_variance: float = 0.2
    critic_steps: int = 1
    fisher_rho: float = 1e-6
    w_mse: float = 1.0
    w_pcc: float = 0.5
    w_ccc: float = 0.5
    adv_weight: float = 0.1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    lr_step_every: int = 5000
    lr_gamma: float = 0.9
    split: SplitMethod = "otsu"
    weak_share: float = 0.75

    def __post_init__(self) -> None:
        for name in ("margin_max", "confidence", "mi_variance", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CafOptions.{name} must be > 0, got {getattr(self, name)}")
        for name in ("knn_k", "critic_steps", "lr_step_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"CafOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.split not in ("otsu", "cumulative"):
            raise ValueError(f"CafOptions.split must be 'otsu' or 'cumulative', got {self.split!r}")


@dataclass
class CafOptimizers:
    """Adam for encoder + regressor, Adam for the critic (None for the baseline), and the
    StepLR schedulers of both."""

    encoder: torch.optim.Optimizer
    critic: torch.optim.Optimizer | None
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (for checkpoints)."""
        return {"encoder": self.encoder.state_dict(),
                "critic": None if self.critic is None else self.critic.state_dict(),
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        for scheduler, scheduler_state in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(scheduler_state)


def make_optimizers(model: CafModel, config: CafOptions) -> CafOptimizers:
    """The authors' optimisers: Adam(lr, betas=(0.5, 0.9)) for every network, LR times
    ``lr_gamma`` every ``lr_step_every`` iterations."""

    def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas,
                                fused=fused_on_cuda(params))

    encoder = adam(model.encoder_regressor_parameters())
    critic = None if model.critic is None else adam(list(model.critic.parameters()))
    schedulers = [torch.optim.lr_scheduler.StepLR(o, config.lr_step_every, config.lr_gamma)
                  for o in (encoder, critic) if o is not None]
    return CafOptimizers(encoder, critic, schedulers)


def strong_weak(batch: dict[str, torch.Tensor], threshold: float) -> tuple[torch.Tensor, ...]:
    """Boolean masks (strong, weak): r = sqrt(v^2 + a^2) >= threshold, or < threshold."""
    r = torch.hypot(batch["valence"], batch["arousal"])
    return r >= threshold, r < threshold


@contextlib.contextmanager
def _buffers_kept(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without its buffers (BatchNorm statistics) changing."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters take no gradient (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def critic_step(model: CafModel, optimizers: CafOptimizers, batch: dict[str, torch.Tensor],
                threshold: float, config: CafOptions) -> Stats:
    """One critic update with L_c on the batch's strong and weak features; the encoder
    (parameters and BatchNorm statistics) is left untouched. Returns detached statistics;
    ``critic_skipped`` = 1 when the batch lacks strong or weak rows."""
    if model.critic is None or optimizers.critic is None:
        raise ValueError("critic_step needs a CAF model with a critic (this is the baseline)")
    strong, weak = strong_weak(batch, threshold)
    m = int(min(strong.sum(), weak.sum()))
    if m == 0:
        return {"critic_skipped": torch.ones((), device=strong.device)}
    with _buffers_kept(model.encoder), torch.no_grad():
        z = model.encoder(batch["image"])
    critic = model.critic
    result = critic_contrastive_loss(
        critic(z[strong][:m]), critic(z[weak][:m]), critic.lagrange,
        margin_max=config.margin_max, confidence=config.confidence, knn_k=config.knn_k,
        rho=config.fisher_rho, mi_variance=config.mi_variance)
    optimizers.critic.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizers.critic.step()
    with torch.no_grad():
        critic.lagrange += config.fisher_rho * result.constraint
    return {"critic_loss": result.loss.detach(), "margin": result.margin,
            "mutual_information": result.mutual_information,
            "critic_positive": result.positive, "critic_negative": result.negative,
            "lagrange": critic.lagrange.detach().clone(),
            "critic_skipped": torch.zeros((), device=strong.device)}


def encoder_step(model: CafModel, optimizers: CafOptimizers, batch: dict[str, torch.Tensor],
                 threshold: float, config: CafOptions) -> Stats:
    """One encoder + regressor update with L_AV + adv_weight * L_adv, the critic frozen
    (the baseline: L_AV alone). Returns detached statistics."""
    target = torch.stack([batch["valence"], batch["arousal"]], dim=1)
    labelled = target.isfinite().all(1)
    if not labelled.any():
        raise ValueError("the batch has no row with valence and arousal (all NaN)")
    z = model.encoder(batch["image"])
    loss_av = va_loss(model.regressor(z[labelled]), target[labelled],
                      config.w_mse, config.w_pcc, config.w_ccc)
    loss = loss_av
    stats: Stats = {"va_loss": loss_av.detach()}
    if model.critic is not None:
        _, weak = strong_weak(batch, threshold)
        if weak.any():
            with _frozen(model.critic):
                loss_adv = adversarial_loss(model.critic(z[weak]))
            loss = loss + config.adv_weight * loss_adv
            stats["adv_loss"] = loss_adv.detach()
    optimizers.encoder.zero_grad(set_to_none=True)
    loss.backward()
    optimizers.encoder.step()
    stats["loss"] = loss.detach()
    return stats


def train_step(model: CafModel, optimizers: CafOptimizers, batch: dict[str, torch.Tensor],
               threshold: float, config: CafOptions) -> Stats:
    """``critic_steps`` critic updates (none for the baseline), one encoder update, then
    the schedulers' step. Returns the last statistics of each."""
    stats: Stats = {}
    if model.critic is not None:
        for _ in range(config.critic_steps):
            stats.update(critic_step(model, optimizers, batch, threshold, config))
    stats.update(encoder_step(model, optimizers, batch, threshold, config))
    for scheduler in optimizers.schedulers:
        scheduler.step()
    return stats
