"""Classification: the steps every classifier method shares, and how one is declared.

A classifier method is a network and its recipe. :func:`register_classifier` registers the
network as a model and, under the same name, a method that trains it with these steps:
cross-entropy (with label smoothing, and Mixup/CutMix targets where the batch carries
them) plus the explicit L2 term λ·Σw² over weight tensors (Deep-Emotion's λ‖w‖², separate
from optimizer weight decay), validated by accuracy and macro-F1 from a summed confusion
matrix, which is drawn at every new best epoch. Its packaged config is
:data:`CLASSIFIER_DEFAULTS` with the classifier's recipe on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ray_fer.config import Config, deep_merge
from ray_fer.data.augment import class_distribution
from ray_fer.data.info import DataInfo
from ray_fer.methods.base import Sums, TrainState
from ray_fer.methods.metrics import classification_metrics
from ray_fer.methods.optim import l2_penalty, one_optimizer, weight_tensors
from ray_fer.methods.registry import (
    Method,
    Model,
    build_network,
    register_method,
    register_model,
)

#: The packaged config every classifier starts from (its recipe overrides it).
CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "data": {"train_splits": ["train"], "val_split": "val"},
    "optim": {"optimizer": "adam", "lr": 1.0e-3, "schedule": "onecycle", "warmup": 0.3},
    "loss": {"l2": 0.0, "label_smoothing": 0.0},
    "train": {"epochs": 30, "batch_size": 64, "eval_batch_size": 256},
}


def build_modules(cfg: Config, info: DataInfo) -> dict[str, nn.Module]:
    """The classifier (``model``)."""
    return {"model": build_network(cfg, info)}


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


def train_batch(state: TrainState, batch: dict) -> Sums:
    """One step of cross-entropy (+ λ·Σw²) on the batch's (mixed) targets."""
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


def eval_batch(state: TrainState, batch: dict) -> Sums:
    """Loss sum, count and confusion matrix of one validation batch."""
    with state.autocast():
        logits = state.modules["model"](batch["image"])
    return classify_eval_sums(logits.float(), batch["label"], state.info.num_classes)


def summarize(sums: Sums, prefix: str, info: DataInfo) -> dict[str, float]:
    """Loss, accuracy and (validation) macro-F1, or (training) the L2 term."""
    count = float(sums.get("count", 0.0))
    if count == 0:  # no rows reached this split: say so rather than report zeros
        return {f"{prefix}_loss": math.nan, f"{prefix}_accuracy": math.nan}
    out = {f"{prefix}_loss": float(sums["loss_sum"]) / count}
    if "confusion" in sums:
        report = classification_metrics(sums["confusion"].cpu().numpy())
        out[f"{prefix}_accuracy"] = report["accuracy"]
        out[f"{prefix}_macro_f1"] = report["macro_f1"]
    else:
        out[f"{prefix}_accuracy"] = float(sums["correct"]) / count
        out[f"{prefix}_l2"] = float(sums["l2_sum"]) / count
    return out


def figures(sums: Sums, info: DataInfo) -> dict[str, bytes]:
    """The validation confusion matrix."""
    from ray_fer.reports.confusion import confusion_summary, plot_confusion

    if "confusion" not in sums:
        return {}
    confusion = sums["confusion"].cpu().numpy()
    return {"confusion": plot_confusion(
        confusion, info.class_names,
        title=f"validation, best epoch · {confusion_summary(confusion)}")}


def register_classifier(name: str, build: Callable[..., nn.Module], *, image_size: int,
                        channels: int, explain_layer: str | Callable[[nn.Module], str] | None,
                        recipe: Mapping[str, Any] | None = None) -> Method:
    """Register the classifier ``name`` (factory ``build``, default input ``image_size``
    px with ``channels`` channels, Grad-CAM on ``explain_layer``) as a model, and a method
    of the same name that trains it with ``recipe`` over :data:`CLASSIFIER_DEFAULTS`."""
    register_model(Model(name, build, image_size=image_size, channels=channels,
                         task="classify", explain_layer=explain_layer))
    return register_method(Method(
        name=name, task="classify", metric="val_accuracy", mode="max",
        build_modules=build_modules, build_optimizers=one_optimizer, train_batch=train_batch,
        eval_batch=eval_batch, summarize=summarize, figures=figures,
        defaults=deep_merge(CLASSIFIER_DEFAULTS, recipe or {})))
