"""The face-generating autoencoder paper's tables 1-3 on a V/A shard prefix.

For each seed, one ResNet-34 V/A regressor is trained per row of the tables:

- ``original``: every training row once (the imbalanced data; table 1);
- ``under T_u``: at most T_u random rows per cell of a V/A grid (table 2);
- ``over T_o``: every cell with fewer than T_o rows replicated up to T_o (table 3);
- ``rerender``: every batch re-rendered by a stage-1 autoencoder, trained first on
  same-person pairs (``--ae-data``, default the same prefix), at V/A uniform in the unit
  disk (the paper's method).

Each is evaluated on the original faces of ``--eval-split``; the script prints a Markdown
table of mean ± std over the seeds of RMSE, PCC (CORR), CCC and SAGR for valence and
arousal. Plain torch on one device, no Ray: the steps, pairing and resampling are those of
``python -m ray_fer.train face_ae | face_ae_regressor`` (``ray_fer.methods.face_ae.steps``).

Shards must hold square RGB or gray faces of a side divisible by 16 (the paper: ingest
with ``--size 64 --channels 3``); the autoencoder works at that size and the regressor
resizes to ``--image-size`` (224 in the paper).

Examples::

    python benchmarks/face_ae_tables.py --data s3://bucket/affectnet \\
        --ae-data s3://bucket/afew-va --seeds 3 --epochs 50 --ae-epochs 50 --device cuda
    python benchmarks/face_ae_tables.py --quick        # CPU smoke test, under a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ray_fer.data.shards import decode_images, read_manifest
from ray_fer.data.targets import targets_label
from ray_fer.methods.face_ae.model import FaceAutoencoder, VaRegressor
from ray_fer.methods.face_ae.steps import (
    Balance,
    FaceAeOptions,
    PairBank,
    ae_step,
    pair_batch,
    regression_step,
    rerendered_regression_step,
    resample_counts,
    stream_range,
)
from ray_fer.methods.metrics import va_metrics
from ray_fer.storage import resolve

METRICS = ("rmse", "pcc", "ccc", "sagr")
HEADERS = {"rmse": "RMSE", "pcc": "CORR", "ccc": "CCC", "sagr": "SAGR"}


@dataclass
class Faces:
    """One split in memory: uint8 faces (N, C, S, S), subject ids, V/A (N, 2), and the
    targets' label ("derived V/A" or "", :func:`ray_fer.data.targets.targets_label`)."""

    images: torch.Tensor
    subjects: np.ndarray
    va: np.ndarray
    targets: str

    @property
    def labelled(self) -> np.ndarray:
        return np.flatnonzero(np.isfinite(self.va).all(1))


def load_split(uri: str, split: str, endpoint: str | None = None, fold: int | None = None,
               in_fold: bool = True) -> Faces:
    """The rows of ``split`` of the shard prefix ``uri``; with ``fold``, only the rows of
    that fold (``in_fold``) or only the others (a subject-disjoint train/test pair)."""
    loc = resolve(uri, endpoint)
    manifest = read_manifest(loc)
    height, width, channels = manifest.image_shape
    if height != width or height % 16:
        sys.exit(f"error: {uri} holds {height}x{width} faces; the autoencoder needs a square "
                 "side divisible by 16: re-ingest with --size 64 --channels 3")
    if split not in manifest.counts:
        sys.exit(f"error: {uri} has no split {split!r} (it has {sorted(manifest.counts)})")
    parts, subjects, va = [], [], []
    for shard in manifest.shards:
        table = pq.read_table(loc.join(shard.file), filesystem=loc.fs,
                              columns=["image", "subject_id", "valence", "arousal", "split",
                                       "fold"])
        keep = np.asarray(table["split"].to_numpy(zero_copy_only=False)) == split
        if fold is not None:
            keep &= (table["fold"].to_numpy(zero_copy_only=False) == fold) == in_fold
        table = table.filter(keep)
        parts.append(torch.from_numpy(decode_images(table["image"], manifest.image_shape))
                     .permute(0, 3, 1, 2).contiguous())
        subjects.append(table["subject_id"].to_numpy(zero_copy_only=False))
        va.append(np.stack([table["valence"].to_numpy(), table["arousal"].to_numpy()], 1))
    return Faces(torch.cat(parts), np.concatenate(subjects).astype(str),
                 np.concatenate(va).astype(np.float32), targets_label(manifest.targets or {}))


def faces_on(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 faces → float faces in the stream's [-1, 1] on ``device``."""
    return stream_range(images.to(device, non_blocking=True).float() / 255)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_autoencoder(data: Faces, args: argparse.Namespace, seed: int,
                      device: torch.device) -> FaceAutoencoder:
    """Stage 1 on same-person pairs of ``data`` (Adam, L_AE)."""
    torch.manual_seed(seed)
    size, channels = data.images.shape[-1], data.images.shape[1]
    ae = FaceAutoencoder(channels, size, width=args.ae_width).to(device)
    bank = PairBank(np.arange(len(data.images)), data.images, data.subjects, data.va[:, 0],
                    data.va[:, 1], seed).to(device)
    if len(bank) == 0:
        sys.exit("error: the autoencoder's data has no same-person pairs with different V/A")
    optimizer = torch.optim.Adam(ae.parameters(), lr=args.lr)
    config = FaceAeOptions(args.lambda_v, args.lambda_a, args.recon_weight)
    generator = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = bank.keys.cpu().numpy()
    ae.train()
    for _ in range(args.ae_epochs):
        for batch in np.array_split(rng.permutation(rows), max(1, len(rows) // args.batch_size)):
            keys = torch.from_numpy(batch).to(device)
            pairs = pair_batch(bank, faces_on(data.images[batch], device), keys, generator)
            with autocast(device):
                ae_step(ae, optimizer, pairs, config)
    return ae.requires_grad_(False).eval()


def evaluate(regressor: torch.nn.Module, data: Faces, batch_size: int,
             device: torch.device) -> dict[str, float]:
    """RMSE, PCC, CCC, SAGR of ``regressor`` on the labelled rows of ``data``."""
    rows = data.labelled
    regressor.eval()
    preds = []
    with torch.no_grad(), autocast(device):
        for batch in np.array_split(rows, max(1, -(-len(rows) // batch_size))):
            preds.append(regressor(faces_on(data.images[batch], device)).float().cpu())
    return va_metrics(torch.cat(preds).numpy(), data.va[rows])


def train_regressor(train: Faces, test: Faces, balance: Balance, threshold: int,
                    ae: FaceAutoencoder | None, args: argparse.Namespace, seed: int,
                    device: torch.device) -> dict[str, float]:
    """One regressor trained on ``train`` resampled by ``balance``; metrics on ``test``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts = resample_counts(train.va[:, 0], train.va[:, 1], balance, threshold,
                             args.grid_cells, seed)
    rows = np.repeat(np.arange(len(counts)), counts)
    regressor = VaRegressor(train.images.shape[1], args.image_size, args.pretrained).to(device)
    optimizer = torch.optim.Adam(regressor.parameters(), lr=args.lr)
    targets = torch.from_numpy(train.va)
    steps = max(1, len(rows) // args.batch_size)
    regressor.train()
    for _ in range(args.epochs):
        for batch in np.array_split(rng.permutation(rows), steps):
            images = faces_on(train.images[batch], device)
            with autocast(device):
                if ae is not None:
                    rerendered_regression_step(regressor, ae, optimizer, images, rng)
                else:
                    regression_step(regressor, optimizer, images, targets[batch].to(device))
    return evaluate(regressor, test, args.eval_batch_size, device)


def protocol(args: argparse.Namespace) -> list[tuple[str, Balance, int]]:
    """The tables' rows: (name, balance, threshold)."""
    return ([("original", "none", 0)]
            + [(f"under T_u={t}", "under", t) for t in args.under]
            + [(f"over T_o={t}", "over", t) for t in args.over]
            + [("rerender (ours)", "rerender", 0)])


def markdown(results: dict[str, list[dict[str, float]]], title: str) -> str:
    """Mean ± std (over seeds) of each metric, valence/arousal, one line per row."""
    head = " | ".join(f"{HEADERS[m]} V | {HEADERS[m]} A" for m in METRICS)
    lines = [f"### {title}", "", f"| training data | seeds | {head} |",
             "|---|---:|" + "---:|" * (2 * len(METRICS))]
    for name, runs in results.items():
        cells = []
        for metric in METRICS:
            for dim in ("valence", "arousal"):
                values = np.array([r[f"{dim}_{metric}"] for r in runs])
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quick_data(folder: Path) -> str:
    """A tiny embedded synthetic set (10 people x 10 faces, 32 px RGB) for the smoke test."""
    from ray_fer.ingest import ingest

    out = folder / "synthetic"
    ingest("synthetic", folder, str(out), size=32, channels=3, folds=2, progress=False,
           reader_options={"subjects": 10, "images_per_subject": 10, "size": 32})
    return str(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="V/A shard prefix for the regressor (local or s3://)")
    p.add_argument("--ae-data", help="shard prefix for the autoencoder (default --data)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default="val")
    p.add_argument("--eval-fold", type=int,
                   help="evaluate on this fold of --train-split and train on its other folds "
                        "(subject-disjoint where the folds are; ignores --eval-split)")
    p.add_argument("--endpoint", help="S3 endpoint URL")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=50, help="regressor epochs")
    p.add_argument("--ae-epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--image-size", type=int, default=224, help="regressor input size")
    p.add_argument("--pretrained", choices=("imagenet", "none"), default="imagenet")
    p.add_argument("--ae-width", type=int, default=32)
    p.add_argument("--lambda-v", type=float, default=0.5)
    p.add_argument("--lambda-a", type=float, default=0.5)
    p.add_argument("--recon-weight", type=float, default=1.0)
    p.add_argument("--grid-cells", type=int, default=10, help="V/A grid cells per axis")
    p.add_argument("--under", type=int, nargs="*", default=[100, 500, 1000])
    p.add_argument("--over", type=int, nargs="*", default=[100, 500, 1000])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke test on a tiny synthetic set (ignores the sizes above)")
    return p


def run(args: argparse.Namespace) -> str:
    """Every row of the protocol for every seed; returns the Markdown table."""
    if args.pretrained == "none":
        args.pretrained = None
    device = torch.device(args.device)
    if args.eval_fold is None:
        train = load_split(args.data, args.train_split, args.endpoint)
        test = load_split(args.data, args.eval_split, args.endpoint)
        held_out = args.eval_split
    else:
        train, test = (load_split(args.data, args.train_split, args.endpoint, args.eval_fold,
                                  in_fold) for in_fold in (False, True))
        held_out = f"fold-{args.eval_fold}"
    ae_data = train if not args.ae_data else load_split(args.ae_data, args.train_split,
                                                        args.endpoint)
    if ae_data.images.shape[1:] != train.images.shape[1:]:
        sys.exit(f"error: --ae-data faces {tuple(ae_data.images.shape[1:])} differ from "
                 f"--data faces {tuple(train.images.shape[1:])}; ingest both at one size")
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in protocol(args)}
    started = time.perf_counter()
    for seed in range(args.seeds):
        ae = train_autoencoder(ae_data, args, seed, device)
        for name, balance, threshold in protocol(args):
            results[name].append(train_regressor(
                train, test, balance, threshold, ae if balance == "rerender" else None,
                args, seed, device))
            print(f"seed {seed} {name}: mean CCC {results[name][-1]['mean_ccc']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return markdown(results, f"{args.data} ({train.targets or 'V/A'}), "
                             f"{len(train.labelled)} training / "
                             f"{len(test.labelled)} {held_out} faces, "
                             f"{args.seeds} seed(s), {args.epochs} epochs")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory(prefix="face_ae_tables-") as tmp:
            args.data, args.ae_data, args.device = quick_data(Path(tmp)), None, "cpu"
            args.seeds, args.epochs, args.ae_epochs, args.batch_size = 2, 1, 2, 16
            args.image_size, args.pretrained, args.ae_width = 32, "none", 8
            args.grid_cells, args.under, args.over = 4, [2], [6]
            print(run(args))
        return 0
    if not args.data:
        print("error: pass --data <shard prefix> (or --quick)", file=sys.stderr)
        return 2
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
