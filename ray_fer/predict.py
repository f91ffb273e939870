"""``python -m ray_fer.predict <model> <image|folder|video> [--out DIR] [--rate FPS]``.

``<model>`` is a checkpoint folder (local or s3://), or a file written by
``python -m ray_fer.export``: ``.onnx`` (run with onnxruntime) or ``.pt`` (TorchScript).
Every face in each photo is found with a detector of :mod:`ray_fer.data.detectors`
(``--detector``: ``haar``, ``mtcnn`` with the ``detect`` extra, or ``auto``, the default:
mtcnn where installed, else haar; use the one the training data were ingested with, named
in their manifest), cropped and converted exactly as ingestion
crops a detected face (:func:`ray_fer.data.faces.prepare_face`: a square of side
1.25 x the box, edge-replicated at borders), resized to the model's input, normalised as
in training, and scored: class probabilities for classifiers, valence and arousal for
V/A models.

Writes ``<out>/predictions.jsonl`` (one line per image or video frame: the source, its
size, and per face the box (x, y, w, h), label and confidence with every probability, or
valence and arousal; ``"no_face": true`` when none is found) and, unless
``--no-annotate``, annotated copies (boxes with label and confidence) under
``<out>/annotated/``: one image per photo, one ``.mp4`` per video; what an earlier run wrote
there is replaced. A folder is searched recursively for images; a video is sampled at
``--rate`` frames per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ray_fer.checkpoint import CheckpointError
from ray_fer.config import ConfigError
from ray_fer.data.augment import normalise
from ray_fer.data.detectors import AUTO, CHOICES, MIN_FACE, get_detector, resolve_detector
from ray_fer.data.faces import FaceSpec, prepare_face
from ray_fer.data.formats.base import (
    MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    DatasetFormatError,
    SourceItem,
    decode_image,
    set_max_pixels,
)
from ray_fer.errors import UserError, print_error
from ray_fer.export import META_KEY, TORCHSCRIPT_META, ModelMeta, load_trained, quiet_torchscript
from ray_fer.storage import writable_folder

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp",
                            ".pgm", ".ppm", ".pbm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg",
                            ".mpeg", ".wmv"})
PREDICTIONS_FILE = "predictions.jsonl"
ANNOTATED_DIR = "annotated"


class PredictError(UserError, ValueError):
    """A model or input that cannot be used; the message names the path and what to do."""


@dataclass
class Predictor:
    """A trained model behind one call: uint8 faces (N, H, W, C) at the model's input
    size → scores (N, K): probabilities for classifiers, (valence, arousal) for V/A.
    Faces are normalised by training's own :func:`ray_fer.data.augment.normalise`."""

    meta: ModelMeta
    run: Callable[[np.ndarray], np.ndarray]

    @property
    def spec(self) -> FaceSpec:
        return FaceSpec(size=self.meta.image_size, channels=self.meta.channels)

    def scores(self, faces: np.ndarray) -> np.ndarray:
        x = normalise(torch.from_numpy(np.ascontiguousarray(faces))).numpy()
        out = np.asarray(self.run(x), dtype=np.float32)
        if self.meta.task == "classify":
            out = np.exp(out - out.max(1, keepdims=True))
            out /= out.sum(1, keepdims=True)
        return out


def load_predictor(model: str, *, device: str = "cpu", endpoint: str | None = None
                   ) -> Predictor:
    """A :class:`Predictor` for a checkpoint folder, an ``.onnx`` or a TorchScript file."""
    suffix = Path(model).suffix.lower()
    if suffix == ".onnx":
        return _onnx_predictor(model, device)
    if suffix in (".pt", ".pth", ".ts", ".torchscript"):
        return _torchscript_predictor(model, device)
    try:
        trained = load_trained(model, endpoint=endpoint, device=device)
    except (CheckpointError, ConfigError) as exc:
        raise PredictError(f"{exc} (or pass a .onnx / .pt file from ray_fer.export)") from exc

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return trained.model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return Predictor(meta=trained.meta, run=run)


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise PredictError(f"{path}: no such model file")
    return p


def _onnx_predictor(path: str, device: str) -> Predictor:
    import onnxruntime as ort

    p = _existing(path)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(p), providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise PredictError(f"{path}: not a loadable ONNX model ({exc})") from exc
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise PredictError(f"{path}: ONNX file without ray_fer metadata; export it with "
                           "python -m ray_fer.export")
    name = session.get_inputs()[0].name
    return Predictor(meta=ModelMeta.from_json(raw, path),
                     run=lambda x: session.run(None, {name: x})[0])


def _torchscript_predictor(path: str, device: str) -> Predictor:
    p = _existing(path)
    extra = {TORCHSCRIPT_META: ""}
    try:
        with quiet_torchscript():
            module = torch.jit.load(str(p), map_location=device, _extra_files=extra)
    except RuntimeError as exc:
        raise PredictError(f"{path}: not a loadable TorchScript model ({exc})") from exc
    if not extra[TORCHSCRIPT_META]:
        raise PredictError(f"{path}: TorchScript file without ray_fer metadata; export it "
                           "with python -m ray_fer.export")
    module.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return Predictor(meta=ModelMeta.from_json(extra[TORCHSCRIPT_META], path), run=run)


# ------------------------------------------------------------------------ one image


def face_record(meta: ModelMeta, box: tuple[int, int, int, int], scores: np.ndarray) -> dict:
    """The JSON record of one face."""
    record: dict = {"box": [int(v) for v in box]}
    if meta.task == "classify":
        best = int(scores.argmax())
        record.update(label=meta.outputs[best], confidence=round(float(scores[best]), 6),
                      probabilities={name: round(float(p), 6)
                                     for name, p in zip(meta.outputs, scores, strict=True)})
    else:
        record.update({name: round(float(v), 6)
                       for name, v in zip(meta.outputs, scores, strict=True)})
    return record


def predict_image(predictor: Predictor, image: np.ndarray, *, min_face: float = MIN_FACE,
                  detector: str = AUTO) -> list[dict]:
    """Records of every face that ``detector`` finds in ``image`` (uint8 gray or RGB),
    largest first."""
    boxes = get_detector(detector)(image, min_face=min_face)
    if not boxes:
        return []
    spec = predictor.spec
    crops = [prepare_face(image, SourceItem(source_file="", box=box), spec) for box in boxes]
    scores = predictor.scores(np.stack(crops))
    return [face_record(predictor.meta, box, s) for box, s in zip(boxes, scores, strict=True)]


def face_caption(face: dict) -> str:
    """``happy 0.93`` or ``v+0.41 a-0.12``."""
    if "label" in face:
        return f"{face['label']} {face['confidence']:.2f}"
    return f"v{face['valence']:+.2f} a{face['arousal']:+.2f}"


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """An RGB copy of ``image`` with each face's box and caption drawn on it."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    thickness = max(1, round(min(out.shape[:2]) / 300))
    scale = max(0.4, min(out.shape[:2]) / 800)
    for face in faces:
        x, y, w, h = face["box"]
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 255, 0), thickness)
        text = face_caption(face)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(y - th - base - 2, 0)
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + base + 2), (0, 255, 0), -1)
        cv2.putText(out, text, (x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return out


# ------------------------------------------------------------------------ inputs


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder`` (by suffix), sorted; PredictError when there are none.

    Only files inside ``folder`` count: a symlink that leads out of it is not followed.
    """
    root = folder.resolve()
    found = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and p.resolve().is_relative_to(root))
    if not found:
        raise PredictError(f"{folder}: no images found (looked for "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))} files, recursively)")
    return found


def read_image(path: Path) -> np.ndarray:
    """Decoded uint8 gray or RGB pixels; PredictError naming the file when it is not one."""
    try:
        return decode_image(path)
    except DatasetFormatError as exc:
        raise PredictError(f"{exc}; pass an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                           f"a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder") from exc


def check_video(path: Path, rate: float) -> None:
    """PredictError unless OpenCV can open ``path`` as a video and ``rate`` is a finite
    number > 0."""
    if not (rate > 0 and math.isfinite(rate)):
        raise PredictError(f"--rate must be a finite number > 0 of frames per second, "
                           f"got {rate}")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise PredictError(f"{path}: OpenCV cannot open this video (unsupported codec "
                               "or not a video file)")
    finally:
        capture.release()


def video_frames(path: Path, rate: float) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, RGB frame) of ``path`` sampled at ``rate`` frames/s
    (every frame when the video's own rate is lower); see :func:`check_video`."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise PredictError(f"{path}: OpenCV cannot open this video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    taken = -1
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            seconds = index / fps
            slot = math.floor(seconds * rate + 1e-9)
            if slot > taken:
                taken = slot
                yield index, seconds, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise PredictError(f"{path}: no frame could be read from this video")


# ------------------------------------------------------------------------ runs


@dataclass
class Summary:
    """Counts of a run: images or frames, faces, those without a face, unreadable files,
    and the face detector that found them."""

    detector: str = ""
    images: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0


def output_folder(out: Path) -> Path:
    """``out`` ready for a run: writable, and without what an earlier run wrote there
    (``predictions.jsonl``, ``annotated/``), so old annotated images never mix with new
    ones. A folder whose ``annotated/`` no run of predict wrote (there is no
    ``predictions.jsonl`` beside it) is refused, not cleared."""
    writable_folder(out)
    annotated = out / ANNOTATED_DIR
    if not (out / PREDICTIONS_FILE).is_file():
        if annotated.exists():
            raise PredictError(f"--out {out}: holds {ANNOTATED_DIR}/ but no "
                               f"{PREDICTIONS_FILE}, so predict did not write it; choose "
                               "another --out")
        return out
    try:
        if annotated.is_dir() and not annotated.is_symlink():
            shutil.rmtree(annotated)
        else:
            annotated.unlink(missing_ok=True)
        (out / PREDICTIONS_FILE).unlink()
    except OSError as exc:
        raise PredictError(f"--out {out}: cannot replace the earlier predictions there "
                           f"({exc.strerror or exc})") from None
    return out


class _Output:
    def __init__(self, out: Path, annotate_images: bool) -> None:
        self.out = output_folder(out)
        self.annotate = annotate_images
        self.lines = (out / PREDICTIONS_FILE).open("w")
        self.summary = Summary()

    def record(self, base: dict, image: np.ndarray | None, faces: list[dict]) -> dict:
        record = dict(base)
        if image is not None:
            record.update(height=int(image.shape[0]), width=int(image.shape[1]), faces=faces,
                          no_face=not faces)
            self.summary.images += 1
            self.summary.faces += len(faces)
            self.summary.no_face += not faces
        else:
            self.summary.errors += 1
        self.lines.write(json.dumps(record) + "\n")
        return record

    def save_image(self, relative: Path, image: np.ndarray) -> None:
        target = self.out / ANNOTATED_DIR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.lines.close()


def _image_job(predictor: Predictor, output: _Output, path: Path, relative: Path,
               min_face: float, detector: str, strict: bool) -> None:
    try:
        image = read_image(path)
    except PredictError as exc:
        if strict:
            raise
        output.record({"source": str(path), "error": str(exc)}, None, [])
        return
    faces = predict_image(predictor, image, min_face=min_face, detector=detector)
    output.record({"source": str(path)}, image, faces)
    if output.annotate:
        output.save_image(relative.with_suffix(".png"), annotate(image, faces))


def _video_job(predictor: Predictor, output: _Output, path: Path, rate: float,
               min_face: float, detector: str, progress: bool) -> None:
    from tqdm import tqdm

    writer = None
    target = output.out / ANNOTATED_DIR / f"{path.stem}.mp4"
    try:
        for index, seconds, frame in tqdm(video_frames(path, rate), desc=path.name,
                                          unit="frame", disable=not progress):
            faces = predict_image(predictor, frame, min_face=min_face, detector=detector)
            output.record({"source": str(path), "frame": index, "time_s": round(seconds, 4)},
                          frame, faces)
            if output.annotate:
                if writer is None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"),
                                             rate, (frame.shape[1], frame.shape[0]))
                writer.write(cv2.cvtColor(annotate(frame, faces), cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()


def predict(model: str, source: str | Path, out: str | Path, *, rate: float = 1.0,
            min_face: float = MIN_FACE, detector: str = AUTO, annotate_images: bool = True,
            device: str = "cpu", endpoint: str | None = None, progress: bool = True
            ) -> Summary:
    """Predict every face in an image, the images of a folder, or a video's frames.

    Writes ``predictions.jsonl`` (and annotated copies) under ``out``. Raises
    PredictError for a missing path, a single file that is neither image nor video, an
    empty folder or an unusable model; inside a folder, an unreadable image becomes a
    JSON line with an ``error`` and the run goes on.
    """
    if not 0 < min_face <= 1:
        raise PredictError(f"--min-face must be in (0, 1] (a fraction of the image's shorter "
                           f"side), got {min_face}")
    detector = resolve_detector(detector)
    source = Path(source)
    if not source.exists():
        raise PredictError(f"{source}: no such file or folder")
    if source.is_dir():
        jobs = list_images(source)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        check_video(source, rate)
        jobs = None
    else:
        read_image(source)  # fail before loading the model when the file is no image
        jobs = [source]
    predictor = load_predictor(model, device=device, endpoint=endpoint)
    output = _Output(Path(out), annotate_images)
    output.summary.detector = detector
    try:
        if jobs is None:
            _video_job(predictor, output, source, rate, min_face, detector, progress)
        else:
            from tqdm import tqdm

            root = source if source.is_dir() else source.parent
            for path in tqdm(jobs, desc="images", unit="img", disable=not progress):
                _image_job(predictor, output, path, path.relative_to(root), min_face,
                           detector, strict=not source.is_dir())
    finally:
        output.close()
    return output.summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_fer.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint folder (local or s3://), .onnx or .pt file")
    p.add_argument("source", help="an image, a folder of images, or a video file")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="video: frames per second to predict (default 1)")
    p.add_argument("--min-face", type=float, default=MIN_FACE,
                   help="smallest face sought, as a fraction of the image's shorter side")
    p.add_argument("--detector", choices=CHOICES, default=AUTO,
                   help="face detector: haar (OpenCV, always there), mtcnn (pip install "
                        "'ray_fer[detect]'), auto = mtcnn if installed, else haar (default)")
    p.add_argument("--no-annotate", action="store_true", help="write JSON lines only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help=f"refuse images of more than N pixels (default {MAX_IMAGE_PIXELS:,}; "
                        f"sets {MAX_PIXELS_ENV})")
    args = p.parse_args(argv)
    try:
        set_max_pixels(args.max_pixels)
        summary = predict(args.model, args.source, args.out, rate=args.rate,
                          min_face=args.min_face, detector=args.detector,
                          annotate_images=not args.no_annotate,
                          device=args.device, endpoint=args.endpoint,
                          progress=not args.quiet and sys.stderr.isatty())
    except (UserError, ValueError) as exc:  # also unreadable model descriptions
        return print_error(exc)
    print(f"{summary.images} image(s)/frame(s), {summary.faces} face(s) by {summary.detector}, "
          f"{summary.no_face} without a face, {summary.errors} unreadable; "
          f"wrote {os.path.join(args.out, PREDICTIONS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
