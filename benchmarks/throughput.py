"""Training throughput: ray_fer's Ray Data → Ray Train path against a plain PyTorch loop.

For each model, at its training size and batch, on one GPU:

(a) plain: the model's training step (ray_fer's own step function: the same loss,
    bf16 autocast, channels_last; the same batches: augmentation and Mixup/CutMix on the
    GPU) over uint8 faces already on the GPU, a seeded permutation per epoch — no Ray, no
    data pipeline;
(b) ray_fer: ``ray_fer.train.driver.train`` — shards read by Ray Data, one Ray Train
    worker, the worker's device cache (``data.cache``) filled in epoch 0; images/s
    from the loop's own per-epoch ``rows_train / time_train_s``, median over epochs ≥ 1,
    plus epoch 0 (streaming from Ray Data while the cache fills) and, with
    ``--stream``, a second run that streams every epoch (``data.cache=off``);
and the run's fixed cost ``time_startup_s`` (planning → first training step; Ray is
started before, as a Tune trial finds it running).

Faces are the procedural set drawn at the model's input size (no upsampling), so bytes per
row are those of real training at that size.

    python benchmarks/throughput.py                               # all models, one GPU
    python benchmarks/throughput.py --models deep_emotion,resnet50 --batch-size resnet50=256
    python benchmarks/throughput.py --packing deep_emotion        # Tune trials per GPU
    python benchmarks/throughput.py --startup deep_emotion        # Tune trial → first step
    python benchmarks/throughput.py --ddp resnet50,resnet50_icbam # DDP on every GPU vs one
    python benchmarks/throughput.py --spread deep_emotion         # Tune trials/hour, all GPUs
                                                                  # (overall, after the first round)

Prints a Markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ray_fer.cluster.runtime import uncached_bytecode
from ray_fer.config import Config
from ray_fer.data import stream
from ray_fer.data.device_cache import DeviceCache
from ray_fer.data.info import DataInfo
from ray_fer.data.shard_source import DECODED_COLUMNS, ROW_ID_STRIDE, decode_table, row_mask
from ray_fer.data.shards import read_manifest
from ray_fer.methods.registry import get_model, method_config
from ray_fer.storage import resolve
from ray_fer.train import driver
from ray_fer.train.epoch import build_state, fit_batch, train_step, wrap_module
from ray_fer.train.plan import plan_run

MODELS = ("deep_emotion", "deep_emotion_wide", "vgg_bn", "mobilenet_v2_dense",
          "efficientnet_b0_dense", "efficientnet_b2_dense", "resnet50", "resnet50_icbam",
          "resnet101", "resnet101_icbam")


def faces(root: Path, size: int, channels: int, rows: int) -> str:
    """Shards of ``rows`` procedural faces at ``size`` px (70 % of them in train)."""
    from ray_fer.ingest import ingest

    uri = str(root / f"faces-{size}-{channels}-{rows}")
    if not (Path(uri) / "manifest.json").is_file():
        subjects = max(10, rows // 70)
        ingest("synthetic", "default", uri, size=size, channels=channels, folds=1,
               reader_options={"subjects": subjects, "images_per_subject": 70, "size": size},
               progress=False)
    return uri


def model_faces(root: Path, model: str, rows: int) -> str:
    """:func:`faces` at ``model``'s input size and channels."""
    defaults = get_model(model)
    return faces(root, defaults.image_size, defaults.channels, rows)


def config(model: str, data: str, storage: Path, name: str, epochs: int, batch: int | None,
           extra: dict) -> Config:
    """The model's packaged training config on one GPU (if any), ``epochs`` long."""
    flags = {"data.uri": data, "run.storage": str(storage), "run.name": name,
             "train.epochs": epochs, "resources.gpu": torch.cuda.is_available(),
             "train.batch_size": batch}
    return method_config(model, flags=flags | extra)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_cache(cfg: Config, data: str, device: torch.device) -> DeviceCache:
    """The train rows of ``data`` decoded straight from its shards (no Ray) into a
    :class:`DeviceCache` on ``device``: the columns and row ids a worker's cache holds."""
    loc = resolve(data)
    manifest = read_manifest(loc)
    parts = []
    for index, shard in enumerate(manifest.shards):
        table = pq.read_table(loc.join(shard.file))
        keep = np.flatnonzero(row_mask(table, cfg.data.train_splits, None, None))
        parts.append(decode_table(table.take(keep), index * ROW_ID_STRIDE + keep,
                                  manifest.image_shape, manifest.num_classes, DECODED_COLUMNS))
    columns = stream.tensor_columns(pa.concat_tables(parts))
    return DeviceCache({name: column.to(device) for name, column in columns.items()})


def plain_epochs(cfg: Config, data: str, epochs: int) -> list[dict]:
    """(a): ``epochs`` of the training step over GPU-resident train rows; per epoch its
    images, wall seconds and ``issue_s``, the seconds until the last step was launched
    (close to ``wall_s``: the host, not the GPU, sets the pace).

    The batches are ray_fer's own (``stream.iter_train_batches`` over the rows on the GPU:
    normalisation, augmentation, Mixup/CutMix as configured), so (a) and (b) do the same
    work per step; (a) has no Ray, no data pipeline and no metric bookkeeping.
    """
    method, plan = plan_run(cfg)
    device = torch.device("cuda" if cfg.resources.gpu else "cpu")
    torch.backends.cudnn.benchmark = True  # as the Ray Train worker sets it
    cache = gpu_cache(cfg, data, device)
    info = DataInfo(class_names=plan.class_names, image_size=plan.image_size,
                    channels=plan.channels)
    state = build_state(method, cfg, info, device, plan.steps_per_epoch)
    state.train_modules = {k: wrap_module(m, cfg, device, 1)
                           for k, m in state.modules.items()}
    for module in state.modules.values():
        module.train()
    channels_last = cfg.train.channels_last and device.type == "cuda"
    records = []
    for epoch in range(epochs):
        batches = stream.iter_train_batches(
            cache, batch_size=cfg.train.batch_size, device=device, augment=cfg.augment,
            seed=cfg.train.seed, epoch=epoch, channels_last=channels_last, drop_last=True,
            rank=0, num_classes=info.num_classes, soft_labels=cfg.loss.soft_labels)
        _sync(device)
        started = time.perf_counter()
        steps = 0
        for batch in batches:
            train_step(method, state, fit_batch(batch, info, channels_last))
            steps += 1
        issued = time.perf_counter()
        _sync(device)
        wall = time.perf_counter() - started
        records.append({"images": steps * cfg.train.batch_size, "wall_s": wall,
                        "issue_s": issued - started})
    return records


def plain_images_per_s(cfg: Config, data: str, epochs: int) -> float:
    """(a)'s images/s: the median over epochs >= 1 of :func:`plain_epochs`."""
    return statistics.median(r["images"] / r["wall_s"] for r in plain_epochs(cfg, data, epochs)[1:])


def ray_path(cfg: Config) -> dict:
    """(b): the loop's own per-epoch figures for one run."""
    outcome = driver.train(cfg)
    rates = [m["rows_train"] / m["time_train_s"] for m in outcome.history]
    return {"epoch0": rates[0], "steady": statistics.median(rates[1:]),
            "startup_s": outcome.history[0].get("time_startup_s")}


def measure(model: str, work: Path, rows: int, epochs: int, batch: int | None,
            with_stream: bool, extra: dict, plain_only: bool = False) -> dict:
    defaults = get_model(model)
    data = model_faces(work, model, rows)
    cfg = config(model, data, work / "runs", f"{model}-cached-{time.time_ns()}", epochs, batch,
                 extra)
    row = {"model": model, "size": defaults.image_size, "channels": defaults.channels,
           "batch": cfg.train.batch_size, "plain": plain_images_per_s(cfg, data, epochs)}
    if plain_only:
        print(json.dumps(row), flush=True)
        return row
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ray_ = ray_path(cfg)
    row |= {"ray_epoch0": ray_["epoch0"], "ray": ray_["steady"], "startup_s": ray_["startup_s"]}
    if with_stream:
        streamed = config(model, data, work / "runs", f"{model}-stream-{time.time_ns()}",
                          epochs, batch, extra | {"data.cache": "off"})
        row["ray_stream"] = ray_path(streamed)["steady"]
    row["ratio"] = row["ray"] / row["plain"]
    print(json.dumps(row), flush=True)
    return row


def search(model: str, data: str, work: Path, *, trials: int, concurrent: int, epochs: int,
           gpus: float, sets: tuple[str, ...] = (), space: Path | None = None) -> dict:
    """One ``python -m ray_fer.tune`` search of ``trials`` trials, ``concurrent`` at a time
    on ``gpus`` GPU each; its wall time and each trial's figures from Tune's results, in
    the order the trials started: its process (``reused``: a process an earlier trial ran
    in), ``time_startup_s`` and images/s (median of epochs >= 1)."""
    from ray_fer import tune

    name = f"{model}-{trials}x{concurrent}-{time.time_ns()}"
    args = [model, "--data", data, "--storage", str(work / "searches"), "--name", name,
            "--num-samples", str(trials), "--max-concurrent", str(concurrent),
            "--epochs", str(epochs), "--grace-period", str(epochs)]
    if torch.cuda.is_available():
        args += ["--gpus-per-trial", str(gpus)]
    if space is not None:
        args += ["--space", str(space)]
    for item in sets:
        args += ["--set", item]
    started = time.perf_counter()
    code = tune.main(args)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"tune {' '.join(args)} exited with {code}")
    records = []
    for trial in (work / "searches" / name).glob("run_trial_*"):
        reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        first = reports[0]
        rates = [m["rows_train"] / m["time_train_s"] for m in reports[1:]]
        began = first["timestamp"] - first["time_total_s"]
        records.append({"began": began, "ended": began + reports[-1]["time_total_s"],
                        "pid": first["pid"], "startup_s": first["time_startup_s"],
                        "images_per_s": statistics.median(rates) if rates else math.nan})
    records.sort(key=lambda r: r["began"])
    seen: set[int] = set()
    for record in records:
        record["reused"] = record["pid"] in seen
        seen.add(record["pid"])
    return {"wall_s": wall, "trials": records}


def packing(model: str, work: Path, rows: int, epochs: int, trials: int) -> dict:
    """Aggregate images/s of ``trials`` Tune trials sharing one GPU vs one trial alone."""
    data = model_faces(work, model, rows)
    out: dict = {"model": model, "trials": trials}
    for label, n in (("alone", 1), ("packed", trials)):
        result = search(model, data, work, trials=n, concurrent=n, epochs=epochs, gpus=1.0 / n)
        out[label] = {"trials": n, "wall_s": result["wall_s"],
                      "images_per_s": sum(t["images_per_s"] for t in result["trials"]),
                      "startup_s": [t["startup_s"] for t in result["trials"]]}
    out["scaling"] = out["packed"]["images_per_s"] / out["alone"]["images_per_s"]
    print(json.dumps(out), flush=True)
    return out


def startup(model: str, work: Path, rows: int, epochs: int, trials: int) -> dict:
    """Trial → first training step: ``2 * trials`` trials, ``trials`` at a time sharing one
    GPU, trained in the trial's own process (the default) and through Ray Train; fresh
    processes (the first round) and reused ones reported apart."""
    data = model_faces(work, model, rows)
    out: dict = {"model": model, "trials": 2 * trials, "concurrent": trials, "epochs": epochs}
    for label, in_trial in (("in_trial", "true"), ("ray_train", "false")):
        result = search(model, data, work, trials=2 * trials, concurrent=trials, epochs=epochs,
                        gpus=1.0 / trials, sets=(f"resources.in_trial={in_trial}",))
        out[label] = {
            "wall_s": result["wall_s"],
            "trials_per_hour": 2 * trials * 3600 / result["wall_s"],
            "startup_fresh_s": [t["startup_s"] for t in result["trials"] if not t["reused"]],
            "startup_reused_s": [t["startup_s"] for t in result["trials"] if t["reused"]]}
    print(json.dumps(out), flush=True)
    return out


def gpu_count() -> int:
    """GPUs of this machine (2 stand-ins in a --cpu-smoke run)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def ddp(model: str, work: Path, rows: int, epochs: int, batch: int | None, extra: dict) -> dict:
    """Images/s of ``model`` trained data-parallel on every GPU of the machine (one Ray
    Train worker per GPU, DDP, the same batch per worker) against one worker on one GPU."""
    data = model_faces(work, model, rows)
    gpus = gpu_count()
    out: dict = {"model": model, "gpus": gpus}
    for workers in (1, gpus):
        cfg = config(model, data, work / "runs", f"{model}-ddp{workers}-{time.time_ns()}",
                     epochs, batch, extra | {"resources.workers": workers})
        out["batch_per_worker"] = cfg.train.batch_size
        out[f"workers_{workers}"] = ray_path(cfg)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out["scaling"] = out[f"workers_{gpus}"]["steady"] / out["workers_1"]["steady"]
    print(json.dumps(out), flush=True)
    return out


def l2_space(model: str, work: Path, batch: int) -> Path:
    """A search of the L2 weight alone at a fixed batch: every trial does the same work."""
    path = work / f"{model}-l2-space.yaml"
    path.write_text(f"method: {model}\nfixed:\n  train.batch_size: {batch}\n"
                    "search:\n  loss.l2: {loguniform: [1.0e-6, 1.0e-2]}\n")
    return path


def steady_trials_per_hour(trials: list[dict]) -> float:
    """Trials/hour of a search once its trial processes exist: the trials that ran in a
    reused process, from the first of them starting to the last trial ending (NaN if none).
    A search's first round also imports torch, starts Ray Data and autotunes cuDNN in new
    processes; this rate leaves that fixed cost out (it slightly undercounts: first-round
    trials still running at the window's start hold slots but are not counted)."""
    reused = [t for t in trials if t["reused"]]
    if not reused:
        return math.nan
    span = max(t["ended"] for t in trials) - min(t["began"] for t in reused)
    return len(reused) * 3600 / span


def spread(model: str, work: Path, rows: int, epochs: int, trials: int, per_gpu: int) -> dict:
    """Trials/hour of one search (``trials`` trials of the L2 weight, ``per_gpu`` trials
    sharing each GPU) given one GPU of the machine, then all of them; overall and after
    the search's first round (:func:`steady_trials_per_hour`)."""
    import ray

    from ray_fer.cluster.runtime import connect
    data = model_faces(work, model, rows)
    space = l2_space(model, work, method_config(model).train.batch_size)
    gpus = gpu_count()
    out: dict = {"model": model, "trials": trials, "per_gpu": per_gpu, "epochs": epochs}
    for given in (1, gpus):
        # Ray schedules trials on the GPUs it is given; the others stay idle.
        connect(1, per_gpu * given, num_gpus=given if torch.cuda.is_available() else None,
                extra={"RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
        try:
            result = search(model, data, work, trials=trials, concurrent=per_gpu * given,
                            epochs=epochs, gpus=1.0 / per_gpu, space=space)
        finally:
            ray.shutdown()
        out[f"gpus_{given}"] = {
            "wall_s": result["wall_s"], "trials_per_hour": trials * 3600 / result["wall_s"],
            "steady_trials_per_hour": steady_trials_per_hour(result["trials"]),
            "startup_fresh_s": [t["startup_s"] for t in result["trials"] if not t["reused"]],
            "images_per_s": statistics.median(t["images_per_s"] for t in result["trials"])}
    for key, rate in (("scaling", "trials_per_hour"), ("steady_scaling", "steady_trials_per_hour")):
        out[key] = out[f"gpus_{gpus}"][rate] / out["gpus_1"][rate]
    print(json.dumps(out), flush=True)
    return out


def _cell(row: dict, key: str, form: str = ",.0f") -> str:
    """``row[key]`` formatted, or a dash where it was not measured."""
    return format(row[key], form) if key in row else "—"


def table(rows: list[dict]) -> str:
    lines = ["| model | input | batch | (a) plain img/s | (b) ray_fer img/s | (b)/(a) | "
             "epoch 0 (filling cache) img/s | streaming every epoch img/s | startup s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size']}×{r['size']}×{r['channels']} | {r['batch']} | "
            f"{r['plain']:,.0f} | {_cell(r, 'ray')} | {_cell(r, 'ratio', '.2f')} | "
            f"{_cell(r, 'ray_epoch0')} | {_cell(r, 'ray_stream')} | "
            f"{_cell(r, 'startup_s', '.1f')} |")
    return "\n".join(lines)


def add_run_args(p: argparse.ArgumentParser, set_help: str) -> None:
    """The flags every training benchmark here takes: --epochs, --set, --cpu-smoke,
    --work, --json."""
    p.add_argument("--epochs", type=int, default=4,
                   help="epochs per measurement (>= 2: epoch 0 compiles, warms up and fills "
                        "the cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run on CPU (checks the script; the figures mean nothing)")
    p.add_argument("--work", help="folder for shards and runs (default: a temp folder)")
    p.add_argument("--json", help="write the results here")


def gpu_or_smoke(p: argparse.ArgumentParser, args: argparse.Namespace, script: str) -> bool:
    """Whether to go on: a GPU is here or ``--cpu-smoke`` was asked for (else says why).
    Refuses --epochs < 2 as a usage error."""
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 0 compiles, warms up and fills the cache)")
    if torch.cuda.is_available() or args.cpu_smoke:
        return True
    print(f"{script} measures GPU training: no CUDA device here (--cpu-smoke runs it on CPU "
          "to check the script)", file=sys.stderr)
    return False


def config_sets(p: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` flags as config overrides."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expects KEY=VALUE")
        extra[key] = value
    return extra


def finish(result: dict | list, json_path: str | None) -> None:
    """Print the device the figures come from and whether torch's bytecode was cached (new
    processes start seconds slower without); write ``result`` to ``json_path`` if given."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    cached = "no" if uncached_bytecode() else "yes"
    print(f"device: {device}, torch {torch.__version__}, bytecode cached: {cached}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rows", type=int, default=8400, help="faces drawn per input size")
    p.add_argument("--batch-size", action="append", default=[], metavar="MODEL=N",
                   help="override a model's configured batch size")
    p.add_argument("--stream", action="store_true", help="also time data.cache=off")
    p.add_argument("--plain-only", action="store_true",
                   help="time only (a), the plain loop (e.g. to compare --set variants)")
    p.add_argument("--packing", metavar="MODEL", help="measure Tune trials packed per GPU")
    p.add_argument("--startup", metavar="MODEL",
                   help="measure Tune trial → first step, in the trial's process and on Train")
    p.add_argument("--ddp", metavar="MODELS",
                   help="measure DDP on every GPU against one worker (comma-separated models)")
    p.add_argument("--spread", metavar="MODEL",
                   help="measure a search's trials/hour on one GPU and on every GPU")
    p.add_argument("--trials", type=int, default=4,
                   help="trials at once on the GPU (--spread: trials in the search)")
    p.add_argument("--per-gpu", type=int, default=4, help="--spread: trials sharing a GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile (train.compile)")
    add_run_args(p, "override a config key of the --models and --ddp runs, "
                    "e.g. --set train.channels_last=false")
    args = p.parse_args(argv)
    if not gpu_or_smoke(p, args, "throughput.py"):
        return 2
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    batches = {m: int(n) for m, n in (item.split("=") for item in args.batch_size)}
    work = Path(args.work or tempfile.mkdtemp(prefix="ray_fer-throughput-"))
    extra: dict = ({"train.compile": True} if args.compile else {}) | config_sets(p, args.set)
    if extra and (args.packing or args.startup or args.spread):
        p.error("--compile and --set apply to --models and --ddp runs only")
    if args.packing:
        result: dict | list = packing(args.packing, work, args.rows, args.epochs, args.trials)
    elif args.startup:
        result = startup(args.startup, work, args.rows, args.epochs, args.trials)
    elif args.spread:
        result = spread(args.spread, work, args.rows, args.epochs, args.trials, args.per_gpu)
    else:
        from ray_fer.cluster.runtime import connect

        # Started here, so the first model's startup figure excludes starting Ray.
        connect(1, gpu_count())
        if args.ddp:
            result = [ddp(m, work, args.rows, args.epochs,
                          batches.get(m), extra)
                      for m in args.ddp.split(",")]
        else:
            result = [measure(m, work, args.rows, args.epochs,
                              batches.get(m), args.stream, extra, args.plain_only)
                      for m in args.models.split(",")]
            print(table(result))
    finish(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
