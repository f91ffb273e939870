"""A short-trained model saved as a real checkpoint, without Ray (seconds on one CPU core).

The model is trained in-process on a few of the embedded synthetic faces and written with
:func:`ray_fer.checkpoint.save_checkpoint`, the function the training loop uses, so
every tool that reads checkpoints (explain, predict, export) reads it as it would a run's.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ray_fer.checkpoint import Progress, save_checkpoint
from ray_fer.data.info import DataInfo
from ray_fer.data.synthetic import SyntheticFaces
from ray_fer.methods.registry import build_model, get_model, method_config


def synthetic_faces(subjects: int = 3, per_subject: int = 14, size: int = 48,
                    channels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Embedded faces: uint8 (N, size, size, channels), labels, (valence, arousal), classes."""
    reader = SyntheticFaces(subjects=subjects, images_per_subject=per_subject, size=size,
                            splits="none")
    items = list(reader.scan(Path("default")))
    faces = [reader.load(Path("default"), item) for item in items]
    if channels == 1:
        faces = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[..., None] for f in faces]
    labels = np.array([item.label for item in items])
    va = np.array([(item.valence, item.arousal) for item in items], np.float32)
    return np.stack(faces), labels, va, reader.class_names(Path("default"))


def train_checkpoint(folder: Path, model_name: str = "deep_emotion", *, steps: int = 20,
                     seed: int = 0, **model_options) -> Path:
    """Train ``model_name`` for ``steps`` Adam steps on synthetic faces; save a checkpoint.

    Classifiers learn the seven categories (cross-entropy); V/A models (CAF) regress
    valence and arousal (MSE), which is enough for tools that only run the network.
    """
    torch.manual_seed(seed)
    defaults = get_model(model_name)
    faces, labels, va, classes = synthetic_faces(size=defaults.image_size,
                                                 channels=defaults.channels)
    info = DataInfo(class_names=classes, image_size=defaults.image_size,
                    channels=defaults.channels)
    flags = {"run.name": "short", "data.uri": str(folder),
             **{f"model.options.{k}": v for k, v in model_options.items()}}
    cfg = method_config(model_name, flags=flags)
    model = build_model(model_name, num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, **cfg.model.options)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(labels) if defaults.task == "classify" else torch.from_numpy(va)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(x), (16,), generator=g)
        out = model(x[batch])
        loss = (F.cross_entropy(out, y[batch]) if defaults.task == "classify"
                else F.mse_loss(out, y[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_checkpoint(folder, cfg=cfg, info=info, modules={"model": model}, optimizers={},
                    schedulers={}, progress=Progress(next_epoch=1), metrics={},
                    metric="val_accuracy", mode="max")
    return folder
