"""``python -m ray_fer.export <checkpoint> --format onnx|torchscript [--out FILE]``.

Loads the network of a checkpoint (local or s3://; classifiers and the V/A models) and
writes it as one file that needs no ray_fer to run:

- ONNX (opset 20: the first with ``affine_grid``, which Deep-Emotion's spatial transformer
  needs), with a dynamic batch axis, exported with torch's TorchScript-based exporter
  (``dynamo=False``: no onnxscript needed). After writing, the file is run with
  onnxruntime on CPU and compared with the PyTorch model on a batch of another size; a
  difference above the tolerance (relative, see :func:`relative_difference`) is an error
  and nothing is written.
- TorchScript (``torch.jit.trace``), loadable with ``torch.jit.load`` alone.

Both carry the model's description as JSON (ONNX: metadata property ``ray_fer``;
TorchScript: extra file ``ray_fer.json``): class names, outputs, input size and
channels, and the input convention: float32 (N, C, H, W), pixels / 127.5 - 1.
``python -m ray_fer.predict`` accepts either file in place of a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ray_fer.checkpoint import CheckpointError, read_checkpoint
from ray_fer.config import Config, ConfigError
from ray_fer.errors import UserError, print_error
from ray_fer.methods.registry import build_network, get_method, get_model, method_names
from ray_fer.storage import writable_folder

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
META_KEY = "ray_fer"
TORCHSCRIPT_META = "ray_fer.json"
#: Opset 20 is the first with AffineGrid (Deep-Emotion's spatial transformer).
ONNX_OPSET = 20
INPUT_NAME = "image"
OUTPUT_NAME = "output"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """torch 2.14 marks TorchScript (``torch.jit``) and the TorchScript-based ONNX exporter
    deprecated; both still work and are what these formats need, so the notices go. So do
    the tracer's notes on ``affine_grid``'s argument checks and on an ensemble's input
    conversion (shape tests that hold for every input of the exported size); each export is
    checked against PyTorch on another batch size instead."""
    with warnings.catch_warnings():
        for module in ("torch.nn.functional", "ray_fer.models.layers.inputs"):
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=module)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript",
                                category=DeprecationWarning)
        yield


@dataclass(frozen=True)
class ModelMeta:
    """What a trained network takes and gives, readable without torch.

    ``outputs`` names the columns of the model's output: class names (logits) for
    classifiers, ``valence``/``arousal`` (in [-1, 1]) for V/A models.
    """

    model: str
    task: str
    class_names: list[str]
    outputs: list[str]
    image_size: int
    channels: int
    input: str = "float32 (N, C, H, W), pixels / 127.5 - 1"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelMeta:
        """Read a description; keys of other versions (files exported before a field was
        dropped, such as ``family``) are ignored."""
        try:
            raw = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{where}: unreadable ray_fer model description ({exc})") from exc


@dataclass
class Trained:
    """A checkpoint's network in eval mode, with its description, the run's config and
    the layer Grad-CAM reads in it (None: the model declares none)."""

    model: nn.Module
    meta: ModelMeta
    cfg: Config
    explain_layer: str | None = None


def load_trained(checkpoint: str, *, endpoint: str | None = None,
                 device: str | torch.device = "cpu") -> Trained:
    """The network of ``checkpoint`` (a folder, local or s3://) on ``device``, in eval mode.

    Only the network is built (no optimizer, no training data is read). Raises
    CheckpointError for a folder that is not a checkpoint, ConfigError for a method
    whose checkpoint holds no single inference network (its ``inference`` is off).
    """
    loaded = read_checkpoint(checkpoint, endpoint, map_location=device)
    cfg, info = loaded.cfg, loaded.info
    method = get_method(cfg.method)
    if not method.inference:
        takes = [m for m in method_names("va") if get_method(m).inference]
        raise ConfigError(f"{checkpoint}: {cfg.method!r} checkpoints hold no single "
                          "inference network; explain, predict and export take classifiers "
                          f"and the V/A methods {', '.join(takes)}")
    model = build_network(cfg, info)
    saved = loaded.state["modules"].get("model")
    if saved is None:
        raise CheckpointError(f"{checkpoint}: checkpoint has no module named 'model'")
    model.load_state_dict(saved)
    model.to(device).eval()
    meta = ModelMeta(model=cfg.model_name, task=method.task,
                     class_names=list(info.class_names), outputs=method.outputs(info.class_names),
                     image_size=info.image_size, channels=info.channels)
    return Trained(model=model, meta=meta, cfg=cfg,
                   explain_layer=get_model(cfg.model_name).gradcam_layer(model))


def _example(meta: ModelMeta, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, meta.channels, meta.image_size, meta.image_size, generator=g) * 2 - 1


def _write_checked(path: Path, write: Callable[[Path], float], what: str,
                   tolerance: float) -> float:
    """Run ``write(tmp)``, which writes a file and returns its difference from the eager
    model, and move the file to ``path`` unless that difference is above ``tolerance``
    (ValueError naming ``what``). Nothing is left behind on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        diff = write(tmp)
        if not diff <= tolerance:
            raise ValueError(f"{what} differs from eager PyTorch by {diff:.3g} "
                             f"(> {tolerance}); the file was not written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def export_onnx(trained: Trained, path: str | Path, *, opset: int = ONNX_OPSET,
                tolerance: float = 1e-3) -> float:
    """Write ``trained`` as ONNX to ``path``; returns its :func:`relative_difference` from
    PyTorch on a random batch, run with onnxruntime on CPU (ValueError above
    ``tolerance``)."""
    import onnx

    module = trained.model.cpu()

    def write(tmp: Path) -> float:
        # A batch of 2 at trace time: a batch of 1 lets the tracer fold the batch size.
        with quiet_torchscript():
            torch.onnx.export(module, (_example(trained.meta, 2),), str(tmp), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"},
                                            OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset)
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, trained.meta.to_json()
        onnx.save(proto, str(tmp))
        return onnx_difference(module, tmp, trained.meta)

    return _write_checked(Path(path), write, f"ONNX export of {trained.meta.model}", tolerance)


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max(1, max |want|): absolute for outputs within [-1, 1] (V/A,
    small logits), relative to the output's scale otherwise (an untrained ResNet-101's
    logits reach the hundreds, where float32 rounding alone exceeds 1e-3)."""
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def onnx_difference(module: nn.Module, path: str | Path, meta: ModelMeta,
                    batch: int = 3) -> float:
    """:func:`relative_difference` of the ONNX file from ``module`` on a random batch
    (a batch size other than the one traced, which also checks the dynamic axis)."""
    import onnxruntime as ort

    x = _example(meta, batch, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).float().numpy()
    return relative_difference(got, want)


def export_torchscript(trained: Trained, path: str | Path, *, tolerance: float = 1e-5) -> float:
    """Write ``trained`` as traced TorchScript to ``path``; returns its
    :func:`relative_difference` from the eager model on a random batch of another size
    (ValueError above ``tolerance``)."""
    module = trained.model.cpu()

    def write(tmp: Path) -> float:
        x = _example(trained.meta, 3, seed=1)
        with quiet_torchscript(), torch.no_grad():
            traced = torch.jit.trace(module, (_example(trained.meta, 2),))
            torch.jit.save(traced, str(tmp),
                           _extra_files={TORCHSCRIPT_META: trained.meta.to_json()})
            return relative_difference(torch.jit.load(str(tmp))(x).numpy(), module(x).numpy())

    return _write_checked(Path(path), write, f"TorchScript export of {trained.meta.model}",
                          tolerance)


def default_out(checkpoint: str, fmt: str) -> Path:
    """``<run>-<checkpoint folder><suffix>`` in the current directory."""
    parts = [p for p in checkpoint.rstrip("/").split("/") if p]
    stem = "-".join(parts[-2:]) if parts else "model"
    return Path(f"{stem}{SUFFIXES[fmt]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_fer.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint folder (local or s3://)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", help="output file (default: <run>-<checkpoint>.onnx|.pt here)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (>= 20)")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.checkpoint, args.format)
    try:
        trained = load_trained(args.checkpoint, endpoint=args.endpoint)
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a folder; name the file to write")
        writable_folder(out.parent)
        if args.format == "onnx":
            diff = export_onnx(trained, out, opset=args.opset)
        else:
            diff = export_torchscript(trained, out)
    except (UserError, ValueError) as exc:
        return print_error(exc)
    print(f"wrote {out} ({args.format}, {trained.meta.model}, outputs "
          f"{', '.join(trained.meta.outputs)}); difference from PyTorch {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
