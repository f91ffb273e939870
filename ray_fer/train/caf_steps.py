"""CAF's training steps: the critic update and the encoder (adversarial + V/A) update.

One iteration (:func:`train_step`) runs ``critic_steps`` critic updates, then one encoder
update, then steps the LR schedulers, mirroring the authors' alternation. The strong/weak
split of a batch uses the threshold delta_r computed once on the training set
(:func:`ray_fer.data.targets.emotion_threshold` with ``CafConfig.split``).

Batches are dicts with ``image`` (N, C, H, W) float, ``valence`` and ``arousal`` (N,) float
tensors; rows whose V/A is NaN take part in neither loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ray_fer.config import Config, ConfigError, merged
from ray_fer.data.shards import read_columns, read_manifest
from ray_fer.data.targets import SplitMethod, emotion_threshold
from ray_fer.models.caf import CafModel
from ray_fer.models.registry import build_model
from ray_fer.storage import resolve
from ray_fer.train.caf_losses import adversarial_loss, critic_contrastive_loss, va_loss
from ray_fer.train.metrics import va_histogram, va_metrics_from_sums, va_sums
from ray_fer.train.steps import (
    DataInfo,
    Method,
    Sums,
    TrainState,
    check_model_options,
    fused_on_cuda,
    reject_mixing,
)

Stats = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CafConfig:
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
                raise ValueError(f"CafConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("knn_k", "critic_steps", "lr_step_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"CafConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.split not in ("otsu", "cumulative"):
            raise ValueError(f"CafConfig.split must be 'otsu' or 'cumulative', got {self.split!r}")


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


def make_optimizers(model: CafModel, config: CafConfig) -> CafOptimizers:
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
                threshold: float, config: CafConfig) -> Stats:
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
                 threshold: float, config: CafConfig) -> Stats:
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
               threshold: float, config: CafConfig) -> Stats:
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


# ------------------------------------------------------------ binding to the training loop


def caf_config(cfg: Config) -> CafConfig:
    """``cfg.options`` as a checked :class:`CafConfig` (errors name ``options.<key>``)."""
    return merged(CafConfig(), cfg.options, "options.")


class EmotionSplit(nn.Module):
    """Holds δ_r, the training set's strong/weak threshold, so checkpoints carry it."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))


def training_threshold(cfg: Config, config: CafConfig) -> float:
    """δ_r from the V/A of the run's training rows (read from the shards, no pixels)."""
    loc = resolve(cfg.data.uri, cfg.data.endpoint)
    table = read_columns(loc, read_manifest(loc), ["valence", "arousal", "split", "fold"])
    rows = np.isin(table["split"].to_numpy(zero_copy_only=False), cfg.data.train_splits)
    if cfg.data.fold is not None:
        rows &= table["fold"].to_numpy() != cfg.data.fold
    valence = table["valence"].to_numpy()[rows]
    arousal = table["arousal"].to_numpy()[rows]
    if not np.isfinite(valence).any():
        raise ConfigError(f"config key 'data.uri': {loc.uri} has no valence/arousal in its "
                          "training rows; CAF needs V/A targets (e.g. ferplus, taiwanese, "
                          "jaffe, affectnet, afew-va or the synthetic set)")
    return emotion_threshold(valence, arousal, config.split, weak_share=config.weak_share)


def _modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    config = caf_config(cfg)
    model = build_model(cfg.model_name, num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, **cfg.model.options)
    return {"model": model, "split": EmotionSplit(training_threshold(cfg, config))}


def _optimizers(cfg: Config, modules: dict[str, nn.Module], steps_per_epoch: int):
    opt = make_optimizers(modules["model"], caf_config(cfg))
    optimizers = {"encoder": opt.encoder}
    if opt.critic is not None:
        optimizers["critic"] = opt.critic
    return optimizers, dict(zip(optimizers, opt.schedulers, strict=True))


def _train(state: TrainState, batch: dict) -> Sums:
    optimizers = CafOptimizers(state.optimizers["encoder"], state.optimizers.get("critic"),
                               list(state.schedulers.values()))
    threshold = float(state.modules["split"].threshold)
    stats = train_step(state.modules["model"], optimizers, batch, threshold,
                       caf_config(state.cfg))
    n = torch.isfinite(batch["valence"]).sum().float()
    sums = {f"{k}_sum": v.float() * n for k, v in stats.items()
            if k in ("loss", "va_loss", "adv_loss", "critic_loss", "margin")}
    return sums | {"count": n}


def va_eval_batch(state: TrainState, batch: dict) -> Sums:
    """V/A regression sums of one validation batch (RMSE/PCC/CCC/SAGR statistics, loss,
    agreement histogram) of a model that maps faces to (valence, arousal)."""
    target = torch.stack([batch["valence"], batch["arousal"]], dim=1).float()
    labelled = target.isfinite().all(1)
    pred = state.modules["model"](batch["image"]).float()[labelled]
    target = target[labelled]
    sums = {f"va_{k}": v for k, v in va_sums(pred, target).items()}
    return sums | {"loss_sum": ((pred - target) ** 2).sum(), "count": labelled.sum().float(),
                   "agreement": va_histogram(pred, target)}


def va_summarize(sums: Sums, prefix: str, info: DataInfo) -> dict[str, float]:
    """Epoch metrics from summed :func:`va_eval_batch` (or training) sums."""
    count = float(sums.get("count", 0.0))
    if count == 0:
        return {f"{prefix}_loss": math.nan, f"{prefix}_mean_ccc": math.nan}
    out = {f"{prefix}_{k[:-4]}": float(v) / count for k, v in sums.items() if k.endswith("_sum")}
    if "va_count" in sums:
        va = va_metrics_from_sums({k[3:]: v for k, v in sums.items() if k.startswith("va_")})
        out |= {f"{prefix}_{k}": v for k, v in va.items()}
    return out


def _figures(sums: Sums, info: DataInfo) -> dict[str, bytes]:
    from ray_fer.reports.va_agreement import plot_va_agreement

    if "agreement" not in sums:
        return {}
    return {"va_agreement": plot_va_agreement(sums["agreement"].cpu().numpy(),
                                              title="validation, best epoch")}


def _check(cfg: Config) -> None:
    caf_config(cfg)
    check_model_options(cfg)
    reject_mixing(cfg, "CAF")
    if cfg.resources.workers != 1:
        # The alternating critic/encoder updates address sub-networks directly, which a
        # DDP wrapper would not synchronise; scale CAF out with parallel Tune trials.
        raise ConfigError("config key 'resources.workers': CAF trains on one worker per run "
                          f"(got {cfg.resources.workers}); search in parallel with "
                          "python -m ray_fer.tune caf instead")


#: CAF and its no-critic baseline (``model.name: caf_baseline``) on the one training loop.
CAF = Method(family="caf", metric="val_mean_ccc", mode="max", build_modules=_modules,
             build_optimizers=_optimizers, train_batch=_train, eval_batch=va_eval_batch,
             summarize=va_summarize, check_config=_check, figures=_figures)
