"""CAF: contrastive adversarial learning for person-independent V/A (Kim & Song, AAAI 2021),
and its no-critic baseline: the ``caf`` and ``caf_baseline`` methods.

The network (:mod:`.model`), the losses (:mod:`.losses`) and the alternating critic and
encoder updates (:mod:`.steps`) are bound here to the training loop: the strong/weak
threshold δ_r is computed once from the training rows' V/A and travels in the
checkpoints (module ``split``), the encoder and critic have an optimizer each, and
validation is the shared V/A regression's (:mod:`ray_fer.methods.va`, metric
``val_mean_ccc``). The method's hyperparameters are ``options`` (:class:`CafOptions`;
the authors' values are the defaults, all searchable).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ray_fer.config import Config, ConfigError, merged
from ray_fer.data.info import DataInfo
from ray_fer.data.shards import read_columns, read_manifest
from ray_fer.data.targets import emotion_threshold
from ray_fer.explain.gradcam import last_relu
from ray_fer.methods import va
from ray_fer.methods.base import Sums, TrainState
from ray_fer.methods.caf.model import caf, caf_baseline
from ray_fer.methods.caf.steps import CafOptimizers, CafOptions, make_optimizers, train_step
from ray_fer.methods.registry import (
    Method,
    Model,
    build_network,
    register_method,
    register_model,
)
from ray_fer.storage import resolve


def caf_options(cfg: Config) -> CafOptions:
    """``cfg.options`` as checked :class:`CafOptions` (errors name ``options.<key>``)."""
    return merged(CafOptions(), cfg.options, "options.")


class EmotionSplit(nn.Module):
    """Holds δ_r, the training set's strong/weak threshold, so checkpoints carry it."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))


def training_threshold(cfg: Config, options: CafOptions) -> float:
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
    return emotion_threshold(valence, arousal, options.split, weak_share=options.weak_share)


def _modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    threshold = training_threshold(cfg, caf_options(cfg))
    return {"model": build_network(cfg, info), "split": EmotionSplit(threshold)}


def _optimizers(cfg: Config, modules: dict[str, nn.Module], steps_per_epoch: int):
    opt = make_optimizers(modules["model"], caf_options(cfg))
    optimizers = {"encoder": opt.encoder}
    if opt.critic is not None:
        optimizers["critic"] = opt.critic
    return optimizers, dict(zip(optimizers, opt.schedulers, strict=True))


def _train(state: TrainState, batch: dict) -> Sums:
    optimizers = CafOptimizers(state.optimizers["encoder"], state.optimizers.get("critic"),
                               list(state.schedulers.values()))
    threshold = float(state.modules["split"].threshold)
    stats = train_step(state.modules["model"], optimizers, batch, threshold,
                       caf_options(state.cfg))
    n = torch.isfinite(batch["valence"]).sum().float()
    sums = {f"{k}_sum": v.float() * n for k, v in stats.items()
            if k in ("loss", "va_loss", "adv_loss", "critic_loss", "margin")}
    return sums | {"count": n}


def _explain_layer(model: nn.Module) -> str:
    """ResNet-18 encoder: its last stage; the small CNN: its last ReLU."""
    if hasattr(model.get_submodule("encoder"), "layer4"):
        return "encoder.layer4"
    return last_relu("encoder")(model)


#: Packaged config (the method's own hyperparameters are :class:`CafOptions`' defaults).
DEFAULTS = {
    "data": {"train_splits": ["train"], "val_split": "val"},
    "train": {"epochs": 10, "batch_size": 128, "eval_batch_size": 256},
    # Mirroring keeps valence/arousal; rotation, scaling and erasing stay mild.
    "augment": {"hflip": True, "max_rotate_deg": 10.0, "erasing_p": 0.25},
    "options": {},
}

for _model in (caf, caf_baseline):
    register_model(Model(_model.__name__, _model, image_size=48, channels=1, task="va",
                         explain_layer=_explain_layer))
    register_method(Method(
        name=_model.__name__, task="va", metric="val_mean_ccc", mode="max",
        build_modules=_modules, build_optimizers=_optimizers, train_batch=_train,
        eval_batch=va.eval_batch, summarize=va.summarize, figures=va.figures,
        defaults=DEFAULTS, options=CafOptions,
        # The alternating critic/encoder updates address sub-networks directly, which a
        # DDP wrapper would not synchronise; CAF scales out with parallel Tune trials.
        max_workers=1))
