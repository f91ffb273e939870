"""``python -m ray_fer.ingest <format> <source> --out <uri>``: a dataset → Parquet face shards.

Pipeline: the reader lists every item (metadata only) → subject-independent k-folds are
assigned to the train split → a process pool decodes and prepares faces in ordered
chunks → :class:`~ray_fer.data.shards.ShardWriter` streams them into shards → the
manifest is written last. At most a few chunks are in flight, so memory stays bounded
whatever the dataset size, and the output depends only on the source, the options and
the face detector (re-running gives byte-identical shards and manifest; ``--detector
auto`` is MTCNN where the ``detect`` extra is installed, else Haar, and the manifest's
``face_detection.detector`` names the one used). Any failure leaves no manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from ray_fer.data.detectors import AUTO, CHOICES, resolve_detector
from ray_fer.data.faces import FaceSpec, prepare_face
from ray_fer.data.formats import DatasetFormatError, Reader, SourceItem, get_reader
from ray_fer.data.formats.base import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, set_max_pixels
from ray_fer.data.shards import FaceRow, Manifest, ShardWriter, invalidate
from ray_fer.data.splits import assign_folds, carve_validation, stratified_holdout
from ray_fer.errors import UserError
from ray_fer.storage import Location, StorageError, check_reachable, resolve

#: (size, channels) of formats whose images are already face crops: kept as they are.
NATIVE_SHAPES = {
    "fer2013-csv": (48, 1),
    "fer2013-folders": (48, 1),
    "ferplus": (48, 1),
    "ckplus48": (48, 1),
}
#: Everything else (whole photos, RGB): 64 px RGB is the face autoencoder's input, and
#: the classifiers resize to their own input size anyway.
DEFAULT_SHAPE = (64, 3)
#: Items per pool task: large enough to amortise inter-process transfer, small enough
#: that the few chunks in flight hold only a few MiB.
CHUNK = 256
#: Chunks in flight per worker; bounds memory when the writer is slower than the pool.
AHEAD_PER_WORKER = 2
NO_FACE = "no face found"


@dataclass(frozen=True)
class _Job:
    """What a pool worker needs besides the items (pickled once per chunk; small)."""

    reader: Reader
    root: Path
    spec: FaceSpec
    detector: str


def _prepare_chunk(job: _Job, items: Sequence[SourceItem]) -> tuple[np.ndarray, list[bool]]:
    """Decode and prepare ``items``: (faces found stacked, found flag per item)."""
    shape = (job.spec.size, job.spec.size, job.spec.channels)
    faces = np.empty((len(items), *shape), np.uint8)
    found: list[bool] = []
    kept = 0
    for item in items:
        image = job.reader.load(job.root, item)
        try:
            face = prepare_face(image, item, job.spec, detector=job.detector)
        except DatasetFormatError:
            raise
        except ValueError as exc:  # e.g. an unsupported pixel type: name the file
            raise DatasetFormatError(f"{item.source_file}: {exc}") from exc
        if face is not None:
            if face.shape != shape or face.dtype != np.uint8:
                raise ValueError(f"{item.source_file}: prepared face is {face.shape} "
                                 f"{face.dtype}, expected {shape} uint8")
            faces[kept] = face
            kept += 1
        found.append(face is not None)
    return faces[:kept], found


def _ordered_map(fn: Callable, chunks: Sequence, workers: int) -> Iterator:
    """``map(fn, chunks)`` over ``workers`` processes, in order, with bounded look-ahead."""
    if workers == 1:
        yield from map(fn, chunks)
        return
    # forkserver: workers do not inherit the parent's S3 client threads (fork-unsafe).
    ctx = multiprocessing.get_context("forkserver")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    todo = iter(chunks)
    try:
        pending = deque(pool.submit(fn, c) for c in islice(todo, workers * AHEAD_PER_WORKER))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, c) for c in islice(todo, 1))
            yield result
    except BaseException:
        # Failed, or stopped (Ctrl-C, SIGTERM, the consumer gone): end the pool's workers
        # now, not once each has finished its chunk (ProcessPoolExecutor can do that itself
        # only from Python 3.14 on).
        for process in set(multiprocessing.active_children()) - before:
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(n: int, size: int) -> list[range]:
    """Index ranges ``[0, size), [size, 2 size), …`` covering ``n`` items."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _fold_of_items(items: Sequence[SourceItem], k: int, seed: int) -> tuple[list[int], str]:
    """Fold per item (-1 outside train) and what the folds group by (subject or row)."""
    train = [i for i, item in enumerate(items) if item.split == "train"]
    subjects = [items[i].subject_id for i in train]
    by = "subject" if any(subjects) else "row"
    groups = len(set(subjects)) if by == "subject" else len(train)
    if train and groups < k:
        raise ValueError(
            f"--folds {k} needs at least {k} {by}s in the train split, found {groups}; "
            f"use --folds {max(groups, 1)} or fewer"
        )
    folds = [-1] * len(items)
    for i, fold in zip(train, assign_folds(subjects, k, seed), strict=True):
        folds[i] = fold
    return folds, by


def _held_out(items: list[SourceItem], sizes: dict[str, int], seed: int, format: str,
              split_source: dict[str, str]) -> tuple[list[SourceItem], dict[str, str]]:
    """Items re-split by :func:`stratified_holdout`, and the manifest's note on how."""
    if split_source:
        raise ValueError(f"--holdout: format {format!r} has official splits "
                         f"({', '.join(split_source)}); hold-outs are for datasets without")
    unknown = set(sizes) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"--holdout: unknown split(s) {sorted(unknown)}; use train, val, test")
    if sum(sizes.values()) != len(items):
        raise ValueError(f"--holdout {_sizes_text(sizes)} adds up to {sum(sizes.values())}, "
                         f"but the source has {len(items)} images")
    names = stratified_holdout([item.label for item in items], sizes, seed)
    note = {name: f"hold-out of {n} of {len(items)} images, stratified by class, seed {seed}"
            for name, n in sizes.items()}
    return [replace(item, split=name) for item, name in zip(items, names, strict=True)], note


def _carved(items: list[SourceItem], fraction: float, seed: int,
            split_source: dict[str, str]) -> tuple[list[SourceItem], dict[str, str]]:
    """Items with ``val`` carved out of ``train`` (:func:`carve_validation`), and the
    manifest's note on each split.

    The dataset's own validation split becomes a held-out test split: ``test`` when the
    layout has no test rows (FER2013's image-folder release: PublicTest), else the official
    name in lower case (``publictest`` beside the CSV's PrivateTest ``test``). Checkpoints
    and searches then select on the carved ``val`` and never see what is reported.
    """
    train = [i for i, item in enumerate(items) if item.split == "train"]
    if not train:
        raise ValueError("--val-from-train: the source has no train split to carve from")
    official = {item.split for item in items}
    renamed = "test" if "test" not in official else split_source.get("val", "val2").lower()
    chosen = carve_validation([items[i].label for i in train],
                              [items[i].subject_id for i in train], fraction, seed)
    carved = set(itertools.compress(train, chosen))
    by = "subject-disjoint" if any(items[i].subject_id for i in train) else "rows"
    note = dict(split_source)
    if "val" in official:
        note[renamed] = split_source.get("val", "val")
    note["val"] = (f"{len(carved)} of {len(train)} train images ({fraction:g}), stratified by "
                   f"class, {by}, seed {seed}")
    note["train"] = f"{split_source.get('train', 'train')} minus val"

    def split_of(i: int, item: SourceItem) -> str:
        if i in carved:
            return "val"
        return renamed if item.split == "val" else item.split

    return [replace(item, split=split_of(i, item)) for i, item in enumerate(items)], note


def _sizes_text(sizes: dict[str, int]) -> str:
    return ",".join(f"{name}={n}" for name, n in sizes.items())


def _parse_holdout(text: str) -> dict[str, int]:
    """``train=120,val=23,test=70`` → ``{"train": 120, "val": 23, "test": 70}``."""
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, _, count = part.partition("=")
        if not count.strip().isdigit():
            raise ValueError(f"--holdout {text!r}: expected split=count pairs such as "
                             "train=120,val=23,test=70")
        sizes[name.strip()] = int(count)
    return sizes


def _check_options(size: int | None, channels: int | None, folds: int,
                   workers: int | None, val_from_train: float | None = None,
                   holdout: dict[str, int] | None = None) -> None:
    if val_from_train is not None and not 0 < val_from_train < 1:
        raise ValueError(f"--val-from-train must be a fraction in (0, 1), got {val_from_train}")
    if val_from_train is not None and "val" in (holdout or {}):
        raise ValueError("--holdout already gives a val split; drop val from it or drop "
                         "--val-from-train")
    if size is not None and not 8 <= size <= 1024:
        raise ValueError(f"--size must be between 8 and 1024 px, got {size}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"--channels must be 1 (gray) or 3 (RGB), got {channels}")
    if folds < 1:
        raise ValueError(f"--folds must be >= 1, got {folds}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")


def ingest(format: str, source: str | Path, out: str, *, size: int | None = None,
           channels: int | None = None, folds: int = 10, seed: int = 0,
           endpoint: str | None = None, workers: int | None = None,
           reader_options: dict | None = None, holdout: dict[str, int] | None = None,
           val_from_train: float | None = None, detector: str = AUTO,
           progress: bool = True) -> Manifest:
    """Ingest dataset ``source`` in layout ``format`` into face shards at ``out``.

    ``size``/``channels`` default to the dataset's native crop (48 px gray for FER2013,
    FER+ and CK+48) and to 64 px RGB for whole photos. ``folds`` subject-independent folds
    (seeded by ``seed``) are assigned to the train split; other splits get fold -1.
    ``holdout`` (split → row count, e.g. JAFFE's ``{"train": 120, "val": 23, "test": 70}``)
    splits a dataset without official splits by class-stratified, seeded sampling.
    ``val_from_train`` (a fraction) carves the validation split out of the training rows
    and turns the official validation split into a held-out test split (:func:`_carved`).
    ``detector`` (:data:`ray_fer.data.detectors.CHOICES`) finds the faces of whole photos.
    Raises :class:`DatasetFormatError`, :class:`StorageError`, :class:`ShardError` or
    ``ValueError`` with a message naming the file, column or endpoint; on any failure
    the prefix is left without a manifest.
    """
    _check_options(size, channels, folds, workers, val_from_train, holdout)
    detector = resolve_detector(detector)
    try:
        reader = get_reader(format, **(reader_options or {}))
    except TypeError as exc:  # an option the format does not take, e.g. --class-map
        raise ValueError(
            f"format {format!r} rejects option(s) {', '.join(sorted(reader_options or {}))} "
            f"({exc})"
        ) from exc
    native_size, native_channels = NATIVE_SHAPES.get(format, DEFAULT_SHAPE)
    spec = FaceSpec(size=size or native_size, channels=channels or native_channels)
    loc = resolve(out, endpoint)
    check_reachable(loc)
    invalidate(loc)  # before anything can fail, so that a failed run never looks done
    root = Path(source)
    items = list(reader.scan(root))
    if not items:
        raise DatasetFormatError(f"{root}: no images found for format {format!r}")
    split_source = reader.split_source()
    if holdout:
        items, split_source = _held_out(items, holdout, seed, format, split_source)
    if val_from_train is not None:
        items, split_source = _carved(items, val_from_train, seed, split_source)
    # Layouts list faces class by class; shards in that order would feed single-class
    # blocks to training (batch norm then learns the batch's class, not the face). A seeded
    # permutation mixes them and keeps ingest reproducible.
    items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    class_names = reader.class_names(root)
    fold_of, by = _fold_of_items(items, folds, seed)
    workers = min(workers or len(os.sched_getaffinity(0)), -(-len(items) // CHUNK))
    try:
        return _write(reader, root, items, fold_of, class_names, spec, detector, loc,
                      workers=workers,
                      fold_info={"k": folds, "seed": seed, "by": by, "split": "train"},
                      split_source=split_source, progress=progress)
    except OSError as exc:  # storage errors not already named by the shard writer
        where = f" at endpoint {loc.endpoint}" if loc.endpoint else ""
        raise StorageError(f"writing {loc.uri}{where} failed: {exc}") from exc


def _write(reader: Reader, root: Path, items: list[SourceItem], fold_of: list[int],
           class_names: list[str], spec: FaceSpec, detector: str, loc: Location, *,
           workers: int,
           fold_info: dict, split_source: dict[str, str], progress: bool) -> Manifest:
    from tqdm import tqdm

    writer = ShardWriter(loc, (spec.size, spec.size, spec.channels), class_names)
    chunks = _chunks(len(items), CHUNK)
    job = _Job(reader=reader, root=root, spec=spec, detector=detector)
    results = _ordered_map(partial(_prepare_chunk, job), [[items[i] for i in c] for c in chunks],
                           workers)
    no_face: list[str] = []
    rows_per_fold: Counter[int] = Counter()
    subjects_per_fold: dict[int, set[str]] = {}
    # Faces searched for (detected, or cropped from a given box or landmarks): only these
    # can come back "no face"; already-cropped images are kept whole.
    attempted = sum(item.needs_detection or item.box is not None or item.landmarks is not None
                    for item in items)
    detected = any(item.needs_detection and item.box is None and not item.landmarks
                   for item in items)
    with contextlib.closing(results), tqdm(
            total=len(items), unit="face", desc=f"ingest {reader.dataset}",
            disable=not progress, file=sys.stderr) as bar:
        for index, (faces, found) in zip(chunks, results, strict=True):
            kept = iter(faces)
            for i, ok in zip(index, found, strict=True):
                item = items[i]
                if not ok:
                    no_face.append(item.source_file)
                    continue
                writer.add(_row(item, next(kept), fold_of[i], reader.dataset))
                if fold_of[i] >= 0:
                    rows_per_fold[fold_of[i]] += 1
                    subjects_per_fold.setdefault(fold_of[i], set()).add(item.subject_id)
            bar.update(len(index))
    k = fold_info["k"]
    folds = fold_info | {"rows_per_fold": [rows_per_fold[f] for f in range(k)]}
    if folds["by"] == "subject":
        folds["subjects_per_fold"] = [len(subjects_per_fold.get(f, ())) for f in range(k)]
    no_face.sort()  # rows are written shuffled; list the failures in source order
    skipped = list(getattr(reader, "skipped", [])) + [
        {"file": f, "reason": NO_FACE} for f in no_face]
    return writer.finish(
        dataset=reader.dataset, format=reader.name, split_source=split_source,
        folds=folds, skipped=skipped,
        # Readers that derive V/A from ratings say so; every report must carry it on.
        targets=getattr(reader, "targets_note", dict)(),
        face_detection={"attempted": attempted, "found": attempted - len(no_face),
                        "failed": no_face, **({"detector": detector} if detected else {})},
    )


def _row(item: SourceItem, image: np.ndarray, fold: int, dataset: str) -> FaceRow:
    return FaceRow(
        image=image, label=item.label, label_name=item.label_name,
        soft_label=item.soft_label, valence=item.valence, arousal=item.arousal,
        subject_id=item.subject_id, split=item.split, fold=fold, dataset=dataset,
        source_file=item.source_file,
    )


def _unique_keys_loader():
    """A safe YAML (and JSON) loader for which a key given twice in one mapping is an error:
    PyYAML keeps the last value silently, so a class map listing a folder twice would map
    it to whichever class came last."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Loader, node, deep: bool = False) -> dict:
        lines: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise ValueError(f"{key!r} is listed twice (lines {lines[key]} and {line}); "
                                 "keep one")
            lines[key] = line
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _load_class_map(path: str) -> dict[str, str]:
    """A folder → class mapping from a YAML or JSON file; clear error when malformed."""
    import yaml

    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), _unique_keys_loader())
    except OSError as exc:
        raise ValueError(f"--class-map {path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"--class-map {path}: not valid YAML/JSON ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"--class-map {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"--class-map {path}: expected a mapping of folder name → class name")
    return data


def _parser() -> argparse.ArgumentParser:
    from ray_fer.data.formats import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m ray_fer.ingest",
        description="Ingest a face dataset into Parquet face shards (local folder or s3://).",
    )
    p.add_argument("format", choices=sorted(FORMATS), help="the dataset's layout")
    p.add_argument("source", help="dataset folder or file (any string for 'synthetic')")
    p.add_argument("--out", required=True, help="shard prefix: a folder or s3://bucket/prefix")
    p.add_argument("--size", type=int, help="face side in px (default: native crop, else 64)")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="1 gray or 3 RGB (default: native, else 3)")
    p.add_argument("--folds", type=int, default=10, help="k of the k-fold column (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold and hold-out assignment")
    p.add_argument("--holdout", metavar="SPLIT=N,...",
                   help="split a dataset without official splits into these counts, "
                        "class-stratified (JAFFE paper protocol: train=120,val=23,test=70)")
    p.add_argument("--val-from-train", type=float, metavar="FRACTION",
                   help="carve a validation split out of train (stratified by class, "
                        "subject-disjoint, seeded); the official validation split becomes "
                        "a test split (FER2013: PublicTest -> test)")
    p.add_argument("--endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--workers", type=int, help="decoding processes (default: CPU count)")
    p.add_argument("--class-map", help="YAML/JSON file: folder name → class name")
    p.add_argument("--detector", choices=CHOICES, default=AUTO,
                   help="face detector for whole photos: haar (OpenCV, always there), mtcnn "
                        "(pip install 'ray_fer[detect]'), auto = mtcnn if installed, else haar")
    p.add_argument("--ignore-unknown-classes", action="store_true",
                   help="class-folders: skip class folders that --class-map does not name")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help=f"refuse images of more than N pixels (default {MAX_IMAGE_PIXELS:,}; "
                        f"sets {MAX_PIXELS_ENV})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    """CLI entry; returns the exit code. User errors print one line, no traceback."""
    args = _parser().parse_args(None if argv is None else list(argv))
    stopped_by: list[int] = []

    def stop(signum: int, frame) -> None:
        # SIGTERM ends an ingest as Ctrl-C does: workers stopped, no manifest.
        stopped_by.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        options = {"class_map": _load_class_map(args.class_map)} if args.class_map else {}
        if args.ignore_unknown_classes:
            options["ignore_unknown"] = True
        set_max_pixels(args.max_pixels)
        manifest = ingest(
            args.format, args.source, args.out, size=args.size, channels=args.channels,
            folds=args.folds, seed=args.seed, endpoint=args.endpoint, workers=args.workers,
            reader_options=options, detector=args.detector, progress=not args.no_progress,
            holdout=_parse_holdout(args.holdout) if args.holdout else None,
            val_from_train=args.val_from_train,
        )
    except (UserError, ValueError) as exc:
        print(f"ingest failed: {exc} (no manifest written)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ingest interrupted (no manifest written)", file=sys.stderr)
        return 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(_summary(manifest, args.out))
    return 0


def _summary(manifest: Manifest, out: str) -> str:
    h, w, c = manifest.image_shape
    splits = ", ".join(f"{s} {sum(n.values())}" for s, n in manifest.counts.items())
    fd = manifest.face_detection
    by = f" by {fd['detector']}" if fd.get("detector") else ""
    detect = f"; faces found{by} {fd['found']}/{fd['attempted']}" if fd.get("attempted") else ""
    return (
        f"wrote {manifest.num_rows} faces ({h}x{w}x{c}) in {len(manifest.shards)} shard(s) "
        f"to {out}: {splits}{detect}; skipped {len(manifest.skipped)}"
    )


if __name__ == "__main__":
    sys.exit(main())
