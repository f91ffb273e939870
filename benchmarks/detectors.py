"""Face detectors compared: how often each finds the face, and its time per image.

Sets (every image of each, or every ``--step``-th):

- ``jaffe``, ``taiwanese``: whole-face portraits (256 px), as ingestion detects them;
- ``ckplus48``: CK+'s 48 px face crops (the face fills the frame);
- ``jaffe-rot20``: JAFFE tilted by 20 degrees (made here: head tilt, common in photos);
- ``package-faces``: in-the-wild photos that installed packages ship, with one face each
  (matplotlib's ``grace_hopper.jpg``; scikit-image's ``astronaut.png`` and ``camera.png``,
  where scikit-image is installed), each also tilted by ±15 and ±30 degrees;
- ``package-no-faces``: scikit-image's sample photos without a face (a cat, coffee, a
  motorcycle, textures, text...): any detection there is a false positive.

Metrics per (set, detector): ``detection_rate`` (a face found), ``correct_rate`` (the
largest box is the face: for portraits, centred within a quarter of the shorter side and
at least 0.3 of it wide; for the package photos, it holds the face's hand-checked centre
and is 0.5-2x its size), ``false_positive_rate`` (images without a face where one is
found) and ``ms_per_image`` (mean and std over images, one thread, after a warm-up call;
ingestion runs one process per core).

Prints a Markdown table, and writes its rows to ``--rows`` in the column order of
``benchmarks/results/detectors.csv``. Examples::

    python benchmarks/detectors.py                       # every image, haar and mtcnn
    python benchmarks/detectors.py --step 10 --rows /tmp/rows.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ray_fer.data.detectors import DETECTORS, get_detector, mtcnn_installed
from ray_fer.data.formats import get_reader
from ray_fer.data.formats.base import decode_image

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RAY_FER_DATASETS", REPO.parent / "shared" / "datasets"))
#: The columns of benchmarks/results/*.csv.
COLUMNS = ("table", "dataset", "split", "selected_on", "method", "variant", "tta", "seeds",
           "epochs", "metric", "unit", "value", "std", "device", "date", "commit", "command",
           "note")
UNITS = {"ms_per_image": "ms", "detection_rate": "fraction", "correct_rate": "fraction",
         "false_positive_rate": "fraction"}
TABLE = "face_detectors"
PORTRAITS = ("jaffe", "taiwanese", "ckplus48")
#: Package photos with one face: (package, path inside its data folder, face centre x, y
#: and side in px), centres and sides checked by eye.
PACKAGE_FACES = (
    ("matplotlib", "sample_data/grace_hopper.jpg", 266, 225, 200),
    ("skimage", "data/astronaut.png", 224, 115, 110),
    ("skimage", "data/camera.png", 226, 155, 65),
)
PACKAGE_NO_FACES = ("brick", "cell", "chelsea", "clock_motion", "coffee", "coins", "color",
                    "grass", "gravel", "horse", "hubble_deep_field", "ihc", "logo", "moon",
                    "motorcycle_left", "page", "retina", "rocket", "text")
TILTS = (-30, -15, 15, 30)
#: Smallest face sought in the package photos (a fraction of the shorter side): the
#: camera man's face is 0.13 of it, below ingestion's default of 0.2.
WILD_MIN_FACE = 0.1


@dataclass
class Sample:
    """One image of a set: the pixels, and where its face is (None: no face in it;
    (cx, cy, side): a checked face; "portrait": centred, whatever its size)."""

    name: str
    image: np.ndarray
    face: tuple[float, float, float] | str | None


@dataclass
class Result:
    """Per-image outcome of one detector on one set."""

    found: list[bool]
    correct: list[bool]
    seconds: list[float]


def unpacked(name: str, work: Path) -> Path:
    """The dataset folder ``name`` from its archive, unpacked once under ``work``."""
    folder = work / name
    if not folder.exists():
        archive = DATASETS / f"{name}.tar.gz"
        if not archive.is_file():
            raise SystemExit(f"error: {archive} not found; set RAY_FER_DATASETS to the folder "
                             "holding the datasets' archives")
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    return folder


def portraits(name: str, work: Path, step: int) -> Iterator[Sample]:
    root = unpacked(name, work)
    reader = get_reader(name)
    for item in list(reader.scan(root))[::step]:
        yield Sample(item.source_file, reader.load(root, item), "portrait")


def tilted(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` rotated by ``degrees`` about its centre (edges replicated), and the
    2x3 matrix that maps its points."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE), matrix


def jaffe_tilted(work: Path, step: int) -> Iterator[Sample]:
    for sample in portraits("jaffe", work, step):
        yield Sample(sample.name, tilted(sample.image, 20)[0], "portrait")


def package_file(package: str, relative: str) -> Path | None:
    """A data file shipped inside an installed package, or None where it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / ("mpl-data" if package == "matplotlib" else "") / relative
    return path if path.is_file() else None


def package_faces() -> Iterator[Sample]:
    for package, relative, cx, cy, side in PACKAGE_FACES:
        path = package_file(package, relative)
        if path is None:
            continue
        image = decode_image(path)
        yield Sample(path.name, image, (cx, cy, side))
        for degrees in TILTS:
            rotated, matrix = tilted(image, degrees)
            x, y = matrix @ np.array([cx, cy, 1.0])
            yield Sample(f"{path.name}@{degrees}", rotated, (x, y, side))


def package_no_faces() -> Iterator[Sample]:
    for name in PACKAGE_NO_FACES:
        path = next((p for suffix in (".png", ".jpg")
                     if (p := package_file("skimage", f"data/{name}{suffix}"))), None)
        if path is not None:
            yield Sample(path.name, decode_image(path), None)


def is_correct(box: tuple[int, int, int, int], sample: Sample) -> bool:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    if sample.face == "portrait":
        height, width = sample.image.shape[:2]
        short = min(height, width)
        return (abs(cx - width / 2) < 0.25 * short and abs(cy - height / 2) < 0.25 * short
                and w >= 0.3 * short)
    fx, fy, side = sample.face
    return x <= fx <= x + w and y <= fy <= y + h and 0.5 * side <= max(w, h) <= 2 * side


def run(detect: Callable, samples: list[Sample], min_face: float) -> Result:
    detect(samples[0].image, min_face=min_face)  # warm-up: loads the model or cascade
    result = Result([], [], [])
    for sample in samples:
        started = time.perf_counter()
        boxes = detect(sample.image, min_face=min_face)
        result.seconds.append(time.perf_counter() - started)
        result.found.append(bool(boxes))
        result.correct.append(bool(boxes) and sample.face is not None
                              and is_correct(boxes[0], sample))
    return result


def metrics(result: Result, has_faces: bool) -> dict[str, tuple[float, float | None]]:
    """metric → (value, std or None)."""
    ms = 1000 * np.asarray(result.seconds)
    out: dict[str, tuple[float, float | None]] = {
        "ms_per_image": (float(ms.mean()), float(ms.std()))}
    if has_faces:
        out["detection_rate"] = (float(np.mean(result.found)), None)
        out["correct_rate"] = (float(np.mean(result.correct)), None)
    else:
        out["false_positive_rate"] = (float(np.mean(result.found)), None)
    return out


def cpu_name() -> str:
    """E.g. "2-core x86_64 CPU (AMD EPYC)"."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = f"{len(os.sched_getaffinity(0))}-core {platform.machine()} CPU"
    return f"{name} ({model})" if model else name


def commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detectors", default=",".join(DETECTORS),
                   help=f"comma-separated, from {', '.join(DETECTORS)}")
    p.add_argument("--step", type=int, default=1, help="every step-th dataset image")
    p.add_argument("--work", help="where the archives are unpacked (default: a temp folder)")
    p.add_argument("--rows", default=str(REPO / "benchmarks" / "results" / "detectors.csv"),
                   help="CSV file for the rows (results.csv columns)")
    args = p.parse_args(argv)
    detectors = [d.strip() for d in args.detectors.split(",")]
    if "mtcnn" in detectors and not mtcnn_installed():
        print("note: facenet-pytorch is not installed (pip install 'ray_fer[detect]'); "
              "measuring haar only", file=sys.stderr)
        detectors = [d for d in detectors if d != "mtcnn"]
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="detectors-"))
    work.mkdir(parents=True, exist_ok=True)
    sets: list[tuple[str, list[Sample], float]] = [
        (name, list(portraits(name, work, args.step)), 0.2) for name in PORTRAITS]
    sets.append(("jaffe-rot20", list(jaffe_tilted(work, args.step)), 0.2))
    sets.append(("package-faces", list(package_faces()), WILD_MIN_FACE))
    sets.append(("package-no-faces", list(package_no_faces()), WILD_MIN_FACE))
    split = "all" if args.step == 1 else f"every {args.step}th"
    stamp = datetime.date.today().isoformat()
    device = f"{cpu_name()}, 1 thread"
    command = "python benchmarks/detectors.py " + shlex.join(argv if argv is not None
                                                             else sys.argv[1:])
    revision = commit()
    rows, table = [], []
    for name, samples, min_face in sets:
        if not samples:
            continue
        has_faces = samples[0].face is not None
        for detector in detectors:
            result = run(get_detector(detector), samples, min_face)
            values = metrics(result, has_faces)
            variant = f"min_face={min_face}"
            for metric, (value, std) in values.items():
                rows.append({"table": TABLE, "dataset": name,
                             "split": split if name in PORTRAITS or name == "jaffe-rot20"
                             else "all", "selected_on": "", "method": detector,
                             "variant": variant, "tta": "", "seeds": "", "epochs": "",
                             "metric": metric, "unit": UNITS[metric], "note": "",
                             "value": f"{value:.4g}", "std": "" if std is None else f"{std:.3g}",
                             "device": device, "date": stamp, "commit": revision,
                             "command": command.strip()})
            missed = [s.name for s, ok in zip(samples, result.found, strict=True)
                      if ok != has_faces]
            table.append((name, len(samples), detector, values, missed))
    print("| set | images | detector | found | correct | false positives | ms/image |")
    print("|---|---|---|---|---|---|---|")
    for name, n, detector, values, _ in table:
        rates = [f"{values[k][0]:.1%}" if k in values else "–"
                 for k in ("detection_rate", "correct_rate", "false_positive_rate")]
        ms, std = values["ms_per_image"]
        print(f"| {name} | {n} | {detector} | {' | '.join(rates)} | {ms:.1f} ± {std:.1f} |")
    for name, _, detector, _, missed in table:
        if missed:
            print(f"{detector} on {name}, wrong on: {', '.join(missed[:12])}"
                  + (f" (+{len(missed) - 12} more)" if len(missed) > 12 else ""))
    with open(args.rows, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
