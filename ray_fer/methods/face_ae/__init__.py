"""The face-generating autoencoder for V/A rebalancing (Kim, Park & Chang): its two
stages, the ``face_ae`` and ``face_ae_regressor`` methods.

:mod:`.model` holds the autoencoder and the ResNet-34 V/A regressor, :mod:`.steps` their
training steps and options, :mod:`.rows` the shard rows both stages read beside the
stream, and :mod:`.stages` binds them to the training loop. Explain, predict and export
do not take either stage's checkpoints; evaluate does.
"""

from __future__ import annotations

from ray_fer.config import deep_merge
from ray_fer.methods import va
from ray_fer.methods.face_ae import stages
from ray_fer.methods.face_ae.model import face_ae, face_ae_regressor
from ray_fer.methods.face_ae.steps import FaceAeOptions, RegressOptions
from ray_fer.methods.optim import one_optimizer
from ray_fer.methods.registry import Method, Model, register_method, register_model

# The paper's optimisation is kept (Adam 1e-4, batch 64, constant rate); what costs CPU
# time is sized so that each stage runs on the embedded faces on a CPU in about a minute.
# The paper's setting: --epochs 50, stage 1 --set model.options.width=32, stage 2
# --image-size 224 --set model.options.pretrained=imagenet.
_SHARED = {
    "data": {"train_splits": ["train"], "val_split": "val"},
    "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 256},
    "optim": {"optimizer": "adam", "lr": 1.0e-4, "schedule": "none"},
    # The paper trains without augmentation.
    "augment": {"enabled": False},
    "options": {},
}

register_model(Model("face_ae", face_ae, image_size=64, channels=3, task="va"))
register_model(Model("face_ae_regressor", face_ae_regressor, image_size=224, channels=3,
                     task="va"))

#: Stage 1: the autoencoder (``python -m ray_fer.train face_ae``).
register_method(Method(
    name="face_ae", task="va", metric="val_pair_mse", mode="min",
    build_modules=stages.ae_modules, build_optimizers=one_optimizer,
    train_batch=stages.ae_train, eval_batch=stages.ae_eval, summarize=stages.ae_summarize,
    defaults=deep_merge(_SHARED, {"model": {"options": {"width": 16}},
                                  "options": {"lambda_v": 0.5, "lambda_a": 0.5,
                                              "recon_weight": 1.0}}),
    options=FaceAeOptions, inference=False, after_run=stages.va_grid,
    # L_AE calls the encoder and decoder separately, past a DDP wrapper's forward: its
    # gradients would not be synchronised.
    max_workers=1))

#: Stage 2: the V/A regressor (``python -m ray_fer.train face_ae_regressor``).
register_method(Method(
    name="face_ae_regressor", task="va", metric="val_mean_ccc", mode="max",
    build_modules=stages.regress_modules, build_optimizers=one_optimizer,
    train_batch=stages.regress_train, eval_batch=va.eval_batch, summarize=va.summarize,
    defaults=deep_merge(_SHARED, {"data": {"image_size": 32, "channels": 3},
                                  "options": {"balance": "none", "threshold": 500,
                                              "grid_cells": 10}}),
    options=RegressOptions, inference=False, check=stages.regress_check,
    resample_train=stages.regress_rows))
