"""A run's TensorBoard, under ``<run>/tensorboard``: the one writer every method's numbers
and figures go through.

Per epoch the scalars (``accuracy/val``, ``loss/train`` ...; other metrics under ``run/``);
at each new best epoch the method's figures (``best/<name>``) and the explanation grid of
a few validation faces (``best/explain``); once a run has finished the method's after-run
images. Steps are epochs, numbered from 0 as checkpoints and ``history.json`` number them.

Local storage: written in place. S3: written to a local folder and copied up after every
epoch (event files are append-only and small), so TensorBoard can read
``s3://.../<run>/tensorboard`` during the run.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
import pyarrow.fs as pafs
import torch

from ray_fer.checkpoint import copy_folder
from ray_fer.explain.run import Subject, explain_to_tensorboard
from ray_fer.storage import resolve

TENSORBOARD_DIR = "tensorboard"


class RunBoard:
    """The TensorBoard writer of the run at ``run_uri`` (rank 0 writes it)."""

    def __init__(self, run_uri: str, endpoint: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = resolve(run_uri, endpoint)
        self.tmp = tempfile.mkdtemp(prefix="ray_fer-tb-") if self.run.is_s3 else None
        self.writer = SummaryWriter(self.tmp or self.run.join(TENSORBOARD_DIR))

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def scalars(self, metrics: dict, epoch: int) -> None:
        """The epoch's numeric metrics: ``<name>/<train|val>`` or ``run/<key>``."""
        for key, value in metrics.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            split, _, name = key.partition("_")
            tag = f"{name}/{split}" if split in ("train", "val") and name else f"run/{key}"
            self.writer.add_scalar(tag, value, epoch)

    def figures(self, pngs: dict[str, bytes], epoch: int) -> None:
        """PNG figures of a new best epoch, under ``best/<name>``."""
        from PIL import Image

        for name, png in pngs.items():
            self.images({f"best/{name}": np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))},
                        epoch)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        """(H, W, 3) uint8 images by tag."""
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def explain(self, subject: Subject, images: torch.Tensor, labels: Sequence[int] | None,
                class_names: Sequence[str], epoch: int) -> None:
        """Grad-CAM and Guided Grad-CAM of ``images`` (their true ``labels`` shown) under
        ``best/explain``."""
        explain_to_tensorboard(self.writer, subject, images, epoch, class_names=class_names,
                               tag="best/explain", labels=labels)

    def flush(self) -> None:
        """Make what was written readable (copied up to S3)."""
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _upload(self) -> None:
        if self.tmp:
            copy_folder(pafs.LocalFileSystem(), self.tmp, self.run.fs,
                        self.run.join(TENSORBOARD_DIR))
