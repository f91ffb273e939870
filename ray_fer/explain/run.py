"""Attribution maps for batches of faces, per-class averages over a split, TensorBoard.

The pieces the CLI (:mod:`ray_fer.explain.__main__`) and the training loop share:
:func:`explain_batch` computes every (method, target) map of a batch,
:func:`class_average` the mean map of each class over a split's rows, read straight from
the shards (no Ray), and :func:`explain_to_tensorboard` writes a grid of a batch to a
TensorBoard ``SummaryWriter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ray_fer.data.augment import normalise
from ray_fer.explain.gradcam import grad_cam
from ray_fer.explain.guided import guided_backprop, guided_grad_cam
from ray_fer.explain.occlusion import occlusion_map
from ray_fer.models.layers.inputs import fit_images

METHODS = ("occlusion", "gradcam", "guided_backprop", "guided_gradcam")
#: Target spec meaning "the class the model predicts" (classifiers only).
PREDICTED = "predicted"
ALL = "all"


@dataclass(frozen=True)
class ExplainOptions:
    """Method settings: the Grad-CAM layer (None: the model's own), the occlusion
    patch, stride and fill value, how many images run at once and how many occluded
    copies of one image."""

    layer: str | None = None
    patch: int = 8
    stride: int = 4
    fill: float = 0.0
    batch_size: int = 64
    occlusion_batch: int = 256


@dataclass(frozen=True)
class Subject:
    """A model to explain: the network (eval mode), its task (``classify`` or ``va``),
    what its outputs mean, and the layer Grad-CAM reads (None: one must be named)."""

    model: nn.Module
    task: str
    outputs: list[str]
    layer: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """Method names from ``"gradcam,occlusion"`` or a list; errors list the known ones."""
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec)]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(METHODS)}")
    return names


def parse_targets(spec: str | None, subject: Subject, methods: Sequence[str]) -> list[str]:
    """Target names: ``predicted``, output names, or ``all`` expanded to every output.

    Default: every output for one method (columns per class) and for V/A models; the
    predicted class when several methods are compared (columns per method).
    """
    if spec is None:
        spec = PREDICTED if subject.task == "classify" and len(methods) > 1 else ALL
    names = [t.strip() for t in spec.split(",") if t.strip()]
    targets: list[str] = []
    for name in names:
        if name == ALL:
            targets += subject.outputs
        elif (name == PREDICTED and subject.task == "classify") or name in subject.outputs:
            targets.append(name)
        else:
            choices = [*subject.outputs, ALL] + ([PREDICTED] if subject.task == "classify"
                                                  else [])
            raise ValueError(f"unknown target {name!r}; choose from {', '.join(choices)}")
    return targets


def attribute(subject: Subject, images: torch.Tensor, outputs: torch.Tensor, method: str,
              options: ExplainOptions) -> torch.Tensor:
    """(N, H, W) maps of ``method`` for output ``outputs[i]`` of each image."""
    model = subject.model
    if method == "occlusion":
        return occlusion_map(model, images, outputs, patch=options.patch, stride=options.stride,
                             fill=options.fill, batch_size=options.occlusion_batch)
    if method == "guided_backprop":
        return guided_backprop(model, images, outputs)
    layer = options.layer or subject.layer
    if layer is None:
        raise ValueError("this model declares no Grad-CAM layer; name one with --layer (a "
                         "module path such as features.3)")
    if method == "gradcam":
        return grad_cam(model, images, outputs, layer)
    if method == "guided_gradcam":
        return guided_grad_cam(model, images, outputs, layer)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


@dataclass
class Explained:
    """Maps of a batch: ``maps`` (N, M, T, H, W) for methods x targets, the model's
    ``scores`` (N, K) (probabilities for classifiers, V/A otherwise) and ``columns``, the
    titles of the M x T columns."""

    maps: np.ndarray
    scores: np.ndarray
    methods: list[str]
    targets: list[str]

    @property
    def columns(self) -> list[str]:
        if len(self.methods) == 1:
            return list(self.targets)
        if len(self.targets) == 1:
            return list(self.methods)
        return [f"{m}: {t}" for m in self.methods for t in self.targets]

    def row_labels(self, subject: Subject) -> list[str]:
        """Per image: the predicted class and its probability, or the predicted V/A."""
        if subject.task == "classify":
            return [f"{subject.outputs[int(s.argmax())]} {float(s.max()):.2f}"
                    for s in self.scores]
        return [f"v{s[0]:+.2f} a{s[1]:+.2f}" for s in self.scores]


def explain_batch(subject: Subject, images: torch.Tensor, methods: Sequence[str],
                  targets: Sequence[str], options: ExplainOptions | None = None) -> Explained:
    """Every (method, target) map of normalised ``images`` (N, C, H, W), in chunks of
    ``options.batch_size`` images on the model's device."""
    options = options or ExplainOptions()
    chunks_maps, chunks_scores = [], []
    for start in range(0, len(images), options.batch_size):
        x = images[start:start + options.batch_size].to(subject.device)
        with torch.no_grad():
            scores = subject.model(x).float()
        if subject.task == "classify":
            scores = scores.softmax(1)
        per_target = []
        for target in targets:
            index = (scores.argmax(1) if target == PREDICTED
                     else torch.full((len(x),), subject.outputs.index(target),
                                     device=x.device))
            per_target.append(index)
        maps = torch.stack([
            torch.stack([attribute(subject, x, index, method, options) for index in per_target],
                        1)
            for method in methods], 1)
        chunks_maps.append(maps.cpu().numpy())
        chunks_scores.append(scores.cpu().numpy())
    return Explained(maps=np.concatenate(chunks_maps), scores=np.concatenate(chunks_scores),
                     methods=list(methods), targets=list(targets))


def display_faces(images: torch.Tensor) -> np.ndarray:
    """Normalised (N, C, H, W) images back to uint8 (N, H, W, C)."""
    return (images.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255)
            .to(torch.uint8).permute(0, 2, 3, 1).numpy())


def model_inputs(faces: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """uint8 faces (N, H, W, C) → the model's normalised input, as training feeds it."""
    return fit_images(normalise(torch.from_numpy(np.ascontiguousarray(faces))), image_size,
                      channels)


@dataclass
class ClassAverage:
    """Per-class average maps: ``maps`` (R, K, H, W) for R rows (method, target),
    ``mean_faces`` uint8 (K, h, w, c), ``counts`` (K,)."""

    maps: np.ndarray
    mean_faces: np.ndarray
    counts: np.ndarray
    rows: list[str]
    class_names: list[str]


def class_average(subject: Subject, faces: np.ndarray, labels: np.ndarray,
                  class_names: Sequence[str], methods: Sequence[str],
                  options: ExplainOptions | None = None, *, image_size: int,
                  channels: int, va_targets: Sequence[str] = ("valence", "arousal")
                  ) -> ClassAverage:
    """Mean map of each class over ``faces``: for classifiers, each face's map of its true
    class; for V/A models, of each of ``va_targets``, grouped by the faces' class."""
    options = options or ExplainOptions()
    targets = ["true class"] if subject.task == "classify" else list(va_targets)
    k = len(class_names)
    sums = None
    counts = np.bincount(labels, minlength=k)
    for start in range(0, len(faces), options.batch_size):
        x = model_inputs(faces[start:start + options.batch_size], image_size, channels).to(
            subject.device)
        y = torch.from_numpy(labels[start:start + options.batch_size]).to(subject.device)
        rows = []
        for method in methods:
            for target in targets:
                index = y if target == "true class" else torch.full_like(
                    y, subject.outputs.index(target))
                rows.append(attribute(subject, x, index, method, options).cpu().numpy())
        maps = np.stack(rows)  # (R, n, H, W)
        if sums is None:
            sums = np.zeros((len(rows), k, *maps.shape[-2:]), np.float64)
        for r in range(len(rows)):
            np.add.at(sums[r], y.cpu().numpy(), maps[r])
    mean_faces = np.stack([
        faces[labels == c].mean(0).round().astype(np.uint8) if counts[c]
        else np.zeros(faces.shape[1:], np.uint8) for c in range(k)])
    averages = sums / np.maximum(counts, 1)[None, :, None, None]
    names = [m if len(targets) == 1 else f"{m}: {t}" for m in methods for t in targets]
    return ClassAverage(maps=averages.astype(np.float32), mean_faces=mean_faces, counts=counts,
                        rows=names, class_names=list(class_names))


def explain_to_tensorboard(writer, subject: Subject, images: torch.Tensor, step: int, *,
                           class_names: Sequence[str],
                           methods: Sequence[str] = ("gradcam", "guided_gradcam"),
                           tag: str = "explain", options: ExplainOptions | None = None,
                           labels: Sequence[int] | None = None) -> Explained:
    """Write a grid of ``methods``' maps of ``images`` to TensorBoard at ``step``.

    ``writer`` is a ``torch.utils.tensorboard.SummaryWriter``; ``images`` are normalised
    faces (N, C, H, W) as the model takes them (a fixed validation batch, say). Columns:
    the methods on the predicted class (classifiers) or on valence and arousal (V/A).
    ``labels`` (class indices of ``images``), where given, are shown as each face's true
    class. The model is put in eval mode and left there; returns the maps.
    """
    from ray_fer.reports.saliency import saliency_grid

    subject.model.eval()
    methods = parse_methods(methods)
    targets = parse_targets(None if subject.task == "va" else PREDICTED, subject, methods)
    explained = explain_batch(subject, images, methods, targets, options)
    n, m, t, h, w = explained.maps.shape
    truth = None if labels is None else [class_names[int(c)] for c in labels]
    grid = saliency_grid(display_faces(images), explained.maps.reshape(n, m * t, h, w),
                         explained.columns, row_labels=explained.row_labels(subject),
                         true_labels=truth if subject.task == "classify" else None)
    writer.add_image(tag, grid, step, dataformats="HWC")
    return explained
