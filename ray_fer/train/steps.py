"""Per-method training steps: what the one loop in :mod:`ray_fer.train.loop` calls.

A :class:`Method` is a frozen bundle of plain functions, so a new method (CAF with its two
optimizers and alternating critic/encoder steps, the face autoencoder's stages) plugs in
without touching the loop:

- ``build_modules(cfg, info)`` → named ``nn.Module``\\ s (checkpointed by name);
- ``build_optimizers(cfg, modules, steps_per_epoch)`` → named optimizers and LR schedulers;
- ``train_batch(state, batch)`` → one optimisation step; returns *sums* (detached tensors)
  such as ``loss_sum`` and ``count``, accumulated on the device without a host sync;
- ``eval_batch(state, batch)`` → sums over one validation batch (e.g. a confusion matrix);
- ``summarize(sums, prefix)`` → epoch metrics from sums that the loop has all-reduced over
  workers, so every metric covers each row exactly once;
- ``metric``/``mode``: the validation metric that picks the best checkpoint and that Tune
  optimises;
- ``figures(sums, info)`` (optional) → named PNGs from the all-reduced validation sums,
  written to TensorBoard at each new best epoch (the confusion matrix, V/A agreement).

Every metric must follow from summed sufficient statistics (counts, confusion matrices,
Σx, Σxy ...): that is what makes the all-reduce exact. Sums include ``count``, the rows
they cover (the loop reports it as ``rows_train`` / ``rows_val``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ray_fer.config import Config, ConfigError
from ray_fer.data.augment import class_distribution
from ray_fer.data.targets import targets_label
from ray_fer.models.registry import build_model, model_defaults, model_names, model_options
from ray_fer.train import metrics as M

Sums = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about the data to build its networks."""

    class_names: list[str]
    image_size: int
    channels: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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
class Method:
    """The functions and the validation metric of one training method (see module doc)."""

    family: str
    metric: str
    mode: Literal["max", "min"]
    build_modules: Callable[[Config, DataInfo], dict[str, nn.Module]]
    build_optimizers: Callable[
        [Config, dict[str, nn.Module], int],
        tuple[dict[str, torch.optim.Optimizer], dict[str, torch.optim.lr_scheduler.LRScheduler]],
    ]
    train_batch: Callable[[TrainState, dict], Sums]
    eval_batch: Callable[[TrainState, dict], Sums]
    summarize: Callable[[Sums, str, DataInfo], dict[str, float]]
    #: Checks ``cfg.options`` and ``cfg.model``; raises ConfigError naming the key.
    check_config: Callable[[Config], None]
    #: Named PNG bytes from validation sums, logged at each new best epoch.
    figures: Callable[[Sums, DataInfo], dict[str, bytes]] | None = None
    #: The training rows as streamed, from the opened training Dataset (e.g. under- or
    #: over-sampled); None = every training row once per epoch.
    resample_train: Callable[[Config, Any], Any] | None = None
    #: Driver side, after a run has finished (gets the config and the loop's RunOutcome),
    #: e.g. to write a figure from the best checkpoint into the run folder.
    after_run: Callable[[Config, Any], None] | None = None


def run_targets(method: Method, targets: dict) -> str:
    """What a run's reports say about its targets: "derived V/A" when ``method`` trains on
    V/A (not on class labels) that the data derived from ratings, else ""."""
    return "" if method.family == "classify" else targets_label(targets)


# ---------------------------------------------------------------- shared building blocks


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


# ---------------------------------------------------------------- classification


def _classify_modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    model = build_model(cfg.model_name, num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, **cfg.model.options)
    return {"model": model}


def _classify_optimizers(cfg: Config, modules: dict[str, nn.Module], steps_per_epoch: int):
    opt = make_optimizer(cfg, modules["model"].parameters())
    return {"model": opt}, {"model": make_scheduler(cfg, opt, steps_per_epoch)}


def _targets(cfg: Config, batch: dict, num_classes: int) -> torch.Tensor:
    """The batch's Mixup/CutMix targets where it has them (they already follow
    ``loss.soft_labels``), else hard labels, or per-row soft labels (vote shares) where
    enabled and present."""
    if "mix_target" in batch:
        return batch["mix_target"]
    labels = batch["label"]
    if not cfg.loss.soft_labels or "soft_label" not in batch:
        return labels
    return class_distribution(labels, batch["soft_label"], num_classes)


def _classify_train(state: TrainState, batch: dict) -> Sums:
    cfg = state.cfg
    model = state.train_modules["model"]
    opt, sched = state.optimizers["model"], state.schedulers["model"]
    images, labels = batch["image"], batch["label"]
    with state.autocast():
        logits = model(images)
    logits = logits.float()
    loss = F.cross_entropy(logits, _targets(cfg, batch, state.info.num_classes),
                           label_smoothing=cfg.loss.label_smoothing)
    objective = loss
    penalty = torch.zeros((), device=loss.device)
    if cfg.loss.l2 > 0:
        penalty = cfg.loss.l2 * l2_penalty(weight_tensors(state.modules["model"]))
        objective = loss + penalty
    opt.zero_grad(set_to_none=True)
    objective.backward()
    opt.step()
    sched.step()
    # torch.full, not torch.tensor: a host-to-device copy would wait for the step's kernels.
    n = torch.full((), float(labels.numel()), device=loss.device)
    # A mixed row counts as right when the model picks its target's dominant class.
    truth = batch["mix_target"].argmax(1) if "mix_target" in batch else labels
    return {
        "loss_sum": loss.detach() * n,
        "l2_sum": penalty.detach() * n,
        "correct": (logits.detach().argmax(1) == truth).sum().float(),
        "count": n,
    }


def classify_logits(model: nn.Module, images: torch.Tensor, tta: str | None = None
                    ) -> torch.Tensor:
    """Logits of ``model`` on ``images``; with ``tta``, log of the mean softmax over views.

    ``flip``: the image and its mirror; ``tencrop``: four corner and the centre crops
    (7/8 of the side, resized back to the model's input size) and their mirrors.
    """
    if tta is None:
        return model(images).float()
    if tta == "flip":
        views = [images, images.flip(-1)]
    elif tta == "tencrop":
        size = images.shape[-1]
        c = max(1, round(size * 7 / 8))
        offsets = [(0, 0), (0, size - c), (size - c, 0), (size - c, size - c),
                   ((size - c) // 2, (size - c) // 2)]
        crops = [F.interpolate(images[..., y:y + c, x:x + c], size=images.shape[-2:],
                               mode="bilinear", align_corners=False) for y, x in offsets]
        views = crops + [v.flip(-1) for v in crops]
    else:
        raise ValueError(f"unknown test-time augmentation {tta!r}; use flip or tencrop")
    probs = torch.stack([model(v).float().softmax(1) for v in views]).mean(0)
    return probs.clamp_min(1e-12).log()


def classify_eval_sums(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Sums:
    """Loss sum, count and confusion matrix (rows = true class) of one batch."""
    loss = F.cross_entropy(logits, labels, reduction="sum")
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2)
    return {
        "loss_sum": loss.detach(),
        "count": torch.full((), float(labels.numel()), device=logits.device),
        "confusion": confusion.reshape(num_classes, num_classes).float(),
    }


def _classify_eval(state: TrainState, batch: dict) -> Sums:
    with state.autocast():
        logits = state.modules["model"](batch["image"])
    return classify_eval_sums(logits.float(), batch["label"], state.info.num_classes)


def _classify_summarize(sums: Sums, prefix: str, info: DataInfo) -> dict[str, float]:
    count = float(sums.get("count", 0.0))
    if count == 0:  # no rows reached this split: say so rather than report zeros
        return {f"{prefix}_loss": math.nan, f"{prefix}_accuracy": math.nan}
    out = {f"{prefix}_loss": float(sums["loss_sum"]) / count}
    if "confusion" in sums:
        report = M.classification_metrics(sums["confusion"].cpu().numpy())
        out[f"{prefix}_accuracy"] = report["accuracy"]
        out[f"{prefix}_macro_f1"] = report["macro_f1"]
    else:
        out[f"{prefix}_accuracy"] = float(sums["correct"]) / count
        out[f"{prefix}_l2"] = float(sums["l2_sum"]) / count
    return out


def _classify_figures(sums: Sums, info: DataInfo) -> dict[str, bytes]:
    from ray_fer.reports.confusion import confusion_summary, plot_confusion

    if "confusion" not in sums:
        return {}
    confusion = sums["confusion"].cpu().numpy()
    return {"confusion": plot_confusion(
        confusion, info.class_names,
        title=f"validation, best epoch · {confusion_summary(confusion)}")}


def check_model_options(cfg: Config) -> None:
    """ConfigError naming the first ``model.options`` key the configured model does not take."""
    accepted = model_options(cfg.model_name)
    for key in cfg.model.options:
        if key not in accepted:
            raise ConfigError(
                f"unknown config key 'model.options.{key}'; model {cfg.model_name!r} "
                f"accepts: {', '.join(accepted) or 'none'}"
            )


def reject_mixing(cfg: Config, method: str) -> None:
    """ConfigError naming the ``augment`` key that turns on Mixup/CutMix, which mixes class
    targets: only the classification methods train on those, not ``method``."""
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(cfg.augment, key) > 0:
            raise ConfigError(f"config key 'augment.{key}': {method} does not support "
                              "Mixup/CutMix (only the classification methods do); set it to 0")


def _classify_check(cfg: Config) -> None:
    if cfg.options:
        raise ConfigError(
            f"unknown config key 'options.{next(iter(cfg.options))}': classification "
            "methods take no method options (model settings go under model.options)"
        )
    check_model_options(cfg)


CLASSIFY = Method(
    family="classify",
    metric="val_accuracy",
    mode="max",
    build_modules=_classify_modules,
    build_optimizers=_classify_optimizers,
    train_batch=_classify_train,
    eval_batch=_classify_eval,
    summarize=_classify_summarize,
    check_config=_classify_check,
    figures=_classify_figures,
)


def method_for(name: str) -> Method:
    """The :class:`Method` that trains ``name`` (a registered classifier, or a V/A method)."""
    if name in model_names("classify"):
        return CLASSIFY
    if name in model_names("va") and model_defaults(name).family == "caf":
        # Imported here: the V/A methods build on this module's shared pieces.
        from ray_fer.train.caf_steps import CAF

        return CAF
    if name in model_names("va") and model_defaults(name).family == "face_ae":
        from ray_fer.train.face_ae_method import FACE_AE, FACE_AE_REGRESSOR

        return FACE_AE if name == "face_ae" else FACE_AE_REGRESSOR
    known = ", ".join([*model_names("classify"), "caf", "caf_baseline", "face_ae",
                       "face_ae_regressor"])
    raise ConfigError(f"unknown method {name!r}; choose one of: {known}")


def data_shape(cfg: Config) -> tuple[int, int]:
    """(image size, channels) the run feeds its model: configured, else the model's own."""
    defaults = model_defaults(cfg.model_name)
    return (cfg.data.image_size or defaults.image_size, cfg.data.channels or defaults.in_channels)
