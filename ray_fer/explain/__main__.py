"""``python -m ray_fer.explain <checkpoint> --images PATH... --method M[,M...] [--split S]``.

Attribution maps of a checkpoint's model (classifiers, and the V/A models w.r.t. valence
or arousal). Methods: ``occlusion`` (``--patch``, ``--stride``, ``--fill``), ``gradcam``
(``--layer``, default: the model's own), ``guided_backprop``, ``guided_gradcam``.

``--images`` (files or folders) are read as face crops (the whole image, padded to a
square) or, with ``--detect``, cropped around the largest face that ``--detector`` finds,
as ingestion does; written to ``--out``: ``grid.png`` (one row per image: the input, then a heat map
and an overlay per column; columns per target with one method, per method with several),
``maps.npy`` (N, methods, targets, H, W) float32 and ``maps.json`` (what the axes are,
predictions). An image in a folder named after one of a classifier's classes (as in
``faces/happy/x.png``) has that class as its true label: the grid shows it above the
prediction, which is green when right and red when wrong. ``--target``: ``predicted``,
``all`` or output names (comma-separated).

``--split NAME`` adds the per-class average map over up to ``--per-class`` rows of each
class of that split of ``--data`` (default: the run's data), each row's map taken for its
true class (V/A models: for valence and arousal, grouped by class):
``class_average.png``, ``class_average.npy`` (rows, classes, H, W), ``class_average.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ray_fer.config import ConfigError
from ray_fer.data.detectors import AUTO, CHOICES, resolve_detector
from ray_fer.data.faces import FaceSpec, prepare_face
from ray_fer.data.formats.base import SourceItem
from ray_fer.data.shards import read_split_faces
from ray_fer.errors import UserError, print_error
from ray_fer.explain.run import (
    METHODS,
    ExplainOptions,
    Subject,
    class_average,
    display_faces,
    explain_batch,
    model_inputs,
    parse_methods,
    parse_targets,
)
from ray_fer.export import Trained, load_trained
from ray_fer.predict import PredictError, list_images, read_image
from ray_fer.reports.saliency import class_average_grid, png_bytes, saliency_grid


def load_faces(paths: list[str], spec: FaceSpec, detect: bool, detector: str = AUTO
               ) -> tuple[np.ndarray, list[str]]:
    """Faces (N, size, size, channels) of the given files and folders, and their paths.

    With ``detect``, images where ``detector`` finds no face are left out with a note on
    stderr.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += list_images(path)
        elif path.is_file():
            files.append(path)
        else:
            raise PredictError(f"{path}: no such image or folder")
    faces, names = [], []
    for file in files:
        face = prepare_face(read_image(file), SourceItem(source_file=file.name,
                                                         needs_detection=detect), spec,
                            detector=detector)
        if face is None:
            print(f"note: {file}: no face found, skipped", file=sys.stderr)
            continue
        faces.append(face)
        names.append(str(file))
    if not faces:
        raise PredictError("no face to explain in the given images")
    return np.stack(faces), names


def true_labels(paths: list[str], class_names: list[str]) -> list[str | None]:
    """Per image, the class its folder is named after (case aside), else None."""
    by_name = {name.casefold(): name for name in class_names}
    return [by_name.get(Path(path).parent.name.casefold()) for path in paths]


def explain_images(trained: Trained, subject: Subject, paths: list[str], out: Path, *,
                   methods: list[str], target: str | None, detect: bool,
                   options: ExplainOptions, detector: str = AUTO) -> dict:
    """Maps of the faces in ``paths``: writes grid.png, maps.npy and maps.json to ``out``."""
    meta = trained.meta
    faces, names = load_faces(paths, FaceSpec(meta.image_size, meta.channels), detect,
                              detector)
    truth = true_labels(names, meta.class_names) if meta.task == "classify" else None
    targets = parse_targets(target, subject, methods)
    images = model_inputs(faces, meta.image_size, meta.channels)
    explained = explain_batch(subject, images, methods, targets, options)
    n, m, t, h, w = explained.maps.shape
    labels = explained.row_labels(subject)
    grid = saliency_grid(display_faces(images), explained.maps.reshape(n, m * t, h, w),
                         explained.columns, row_labels=labels, true_labels=truth)
    np.save(out / "maps.npy", explained.maps)
    (out / "grid.png").write_bytes(png_bytes(grid))
    record = {"images": names, "methods": methods, "targets": targets,
              "axes": ["image", "method", "target", "y", "x"], "outputs": subject.outputs,
              "scores": explained.scores.round(6).tolist(), "predictions": labels,
              "true_labels": truth}
    (out / "maps.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def explain_split(trained: Trained, subject: Subject, data: str, split: str, out: Path, *,
                  methods: list[str], per_class: int, options: ExplainOptions,
                  endpoint: str | None) -> dict:
    """Per-class average maps over ``split``: class_average.{png,npy,json} in ``out``."""
    meta = trained.meta
    faces, labels, class_names = read_split_faces(data, split, per_class=per_class,
                                                  endpoint=endpoint)
    if class_names != meta.class_names:
        raise ConfigError(f"{data} has classes {class_names}, the checkpoint was trained on "
                          f"{meta.class_names}")
    average = class_average(subject, faces, labels, class_names, methods, options,
                            image_size=meta.image_size, channels=meta.channels)
    grid = class_average_grid(average.mean_faces, average.maps, class_names, average.rows,
                              average.counts.tolist())
    np.save(out / "class_average.npy", average.maps)
    (out / "class_average.png").write_bytes(png_bytes(grid))
    record = {"data": data, "split": split, "rows": average.rows, "classes": class_names,
              "counts": average.counts.tolist(), "axes": ["row", "class", "y", "x"]}
    (out / "class_average.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ray_fer.explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint folder (local or s3://)")
    p.add_argument("--images", nargs="+", default=[], help="face images or folders")
    p.add_argument("--method", default="gradcam",
                   help=f"comma-separated, from {', '.join(METHODS)} (default gradcam)")
    p.add_argument("--target", help="predicted, all, or output names, comma-separated")
    p.add_argument("--detect", action="store_true",
                   help="crop the largest detected face (for whole photos)")
    p.add_argument("--detector", choices=CHOICES, default=AUTO,
                   help="face detector for --detect: haar, mtcnn (pip install "
                        "'ray_fer[detect]'), auto = mtcnn if installed, else haar")
    p.add_argument("--layer", help="Grad-CAM layer (module path); default: the model's own")
    p.add_argument("--patch", type=int, default=8, help="occlusion patch side in px")
    p.add_argument("--stride", type=int, default=4, help="occlusion stride in px")
    p.add_argument("--fill", type=float, default=0.0,
                   help="occlusion fill in normalised units (0 = mid-gray)")
    p.add_argument("--split", help="also write per-class average maps over this split")
    p.add_argument("--data", help="shard prefix for --split (default: the run's data)")
    p.add_argument("--per-class", type=int, default=50, help="rows per class for --split")
    p.add_argument("--out", help="output folder (default: explain-<checkpoint folder name>)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--endpoint", help="S3 endpoint URL (else AWS_ENDPOINT_URL[_S3])")
    args = p.parse_args(argv)
    if not args.images and not args.split:
        p.error("give --images, --split, or both")
    options = ExplainOptions(layer=args.layer, patch=args.patch, stride=args.stride,
                             fill=args.fill, batch_size=args.batch_size)
    out = Path(args.out or f"explain-{Path(args.checkpoint.rstrip('/')).name}")
    try:
        methods = parse_methods(args.method)
        detector = resolve_detector(args.detector)
        trained = load_trained(args.checkpoint, endpoint=args.endpoint, device=args.device)
        meta = trained.meta
        subject = Subject(model=trained.model, task=meta.task, outputs=meta.outputs,
                          layer=trained.explain_layer)
        out.mkdir(parents=True, exist_ok=True)
        if args.images:
            explain_images(trained, subject, args.images, out, methods=methods,
                           target=args.target, detect=args.detect, options=options,
                           detector=detector)
        if args.split:
            from ray_fer.train.plan import resolve_data_uri

            data = args.data or resolve_data_uri(trained.cfg)
            explain_split(trained, subject, data, args.split, out, methods=methods,
                          per_class=args.per_class, options=options, endpoint=args.endpoint)
    except (UserError, ValueError) as exc:
        return print_error(exc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
