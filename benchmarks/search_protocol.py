"""A search on real data under a protocol that cannot select on what it reports, end to end.

Steps (``--steps``, default all, in this order):

- ``ingest``: the dataset with a validation split carved from its training rows
  (``--val-from-train``); its official held-out split becomes ``test``;
- ``alone``: one packaged recipe alone for a few epochs (one trial's images/s, which the
  search's aggregate rate is compared with);
- ``search``: ``python -m ray_fer.tune`` with the GPU's utilisation sampled every second;
- ``ensemble``: the top-K ensemble of the search's trials (chosen on ``val``), it and the
  search's best trial evaluated once on ``test`` (plain and ten-crop);
- ``retrain``: the winner's config (``--winner``, default the search's) and the packaged
  recipes, ``--seeds`` seeds each side by side, each evaluated once on ``test``.

``report.json`` and ``rows.csv`` (rows for ``benchmarks/results``) hold what has been
measured so far. Every step is skipped when its output exists and an interrupted search
resumes, so the same command continues where it stopped; the ensemble needs the search's
checkpoints, the retrains only its ``best_config.yaml``, so they may run on another day.
Logs go to ``<work>/logs`` as it runs.

    python benchmarks/search_protocol.py /data/fer2013 --format fer2013-folders \\
        --work /tmp/fer --space fer2013_cnns --samples 64 --concurrent 8 --seeds 3 --top 5 \\
        --commit $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: The columns of benchmarks/results/*.csv.
ROW_FIELDS = ("table", "dataset", "split", "selected_on", "method", "variant", "tta", "seeds",
              "epochs", "metric", "unit", "value", "std", "device", "date", "commit",
              "command", "note")


def log(work: Path, message: str) -> None:
    line = f"{dt.datetime.now(dt.UTC):%H:%M:%S} {message}"
    print(line, flush=True)
    with (work / "logs" / "protocol.log").open("a") as f:
        f.write(line + "\n")


def run(work: Path, name: str, argv: list[str], env: dict | None = None) -> str:
    """Run ``argv`` with its output in ``logs/<name>.log``; raise on failure."""
    log(work, f"{name}: {shlex.join(argv)}")
    out = work / "logs" / f"{name}.log"
    with out.open("w") as f:
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode
    if code != 0:
        raise SystemExit(f"{name} failed ({code}); see {out}")
    return out.read_text()


def start(work: Path, name: str, argv: list[str]) -> subprocess.Popen:
    log(work, f"{name} (background): {shlex.join(argv)}")
    f = (work / "logs" / f"{name}.log").open("w")
    return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)


class GpuSampler:
    """``nvidia-smi`` utilisation every second into a file while a step runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", "-lms", "1000"],
            stdout=path.open("a"), stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def busy(path: Path) -> dict:
    """GPU utilisation (%) and peak memory (GB) of the samples in ``path``."""
    rows = [line.split(",") for line in path.read_text().splitlines() if line.count(",") == 2]
    if not rows:
        return {}
    used = [float(r[1]) for r in rows]
    return {"gpu_busy_mean": statistics.fmean(used), "gpu_busy_median": statistics.median(used),
            "gpu_mem_peak": max(float(r[2]) for r in rows) / 1024, "gpu_samples": len(rows)}


def best_checkpoint(run: Path) -> Path:
    """The checkpoint of a run's best validation epoch."""
    history = json.loads((run / "history.json").read_text())
    best = history[-1]["best_epoch"]
    return run / f"checkpoint_epoch-{best:04d}"


@contextlib.contextmanager
def mps(work: Path, on: bool) -> Iterator[None]:
    """NVIDIA's Multi-Process Service for the GPU while the steps run (``--mps``): the
    kernels of the trials packed on it then run side by side instead of taking turns."""
    if not on:
        yield
        return
    pipes = work / "mps"
    os.environ |= {"CUDA_MPS_PIPE_DIRECTORY": str(pipes / "pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(pipes / "log")}
    for folder in ("pipe", "log"):
        (pipes / folder).mkdir(parents=True, exist_ok=True)
    run(work, "mps-start", ["nvidia-cuda-mps-control", "-d"])
    try:
        yield
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True,
                       capture_output=True)


@contextlib.contextmanager
def ray_head(work: Path) -> Iterator[None]:
    """One Ray node for every step (the retrains share its GPU), with a token of its own,
    unless RAY_ADDRESS names a running one."""
    if os.environ.get("RAY_ADDRESS"):
        yield
        return
    os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    run(work, "ray-start", ["ray", "start", "--head", "--disable-usage-stats"])
    os.environ["RAY_ADDRESS"] = "auto"
    try:
        yield
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
        del os.environ["RAY_ADDRESS"]


def search_stats(exp: Path, alone_img_s: float | None) -> dict:
    """Trials per hour and aggregate training images/s of a search, from its trials'
    reports (``result.json``), against one trial alone."""
    reports = [json.loads(line) for trial in exp.glob("run_trial_*")
               for line in (trial / "result.json").read_text().splitlines()]
    if not reports:
        return {}
    first = min(r["timestamp"] - r["time_this_iter_s"] for r in reports)
    wall = max(r["timestamp"] for r in reports) - first
    images = sum(r["rows_train"] for r in reports)
    trials = len({r["trial_id"] for r in reports})
    epochs = len(reports)
    rate = images / wall
    return {"trials": trials, "epochs": epochs, "search_wall_s": wall,
            "trials_per_hour": trials / wall * 3600, "aggregate_img_s": rate,
            "alone_img_s": alone_img_s,
            "aggregate_vs_alone": rate / alone_img_s if alone_img_s else None}


def evaluate(work: Path, name: str, checkpoint: Path) -> dict:
    out = work / "eval" / name
    if not (out / "metrics.json").is_file():
        run(work, f"eval-{name}", [sys.executable, "-m", "ray_fer.evaluate", str(checkpoint),
                                   "--split", "test", "--tta", "tencrop", "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    with mps(args.work, args.mps), ray_head(args.work):
        return protocol(args)


def _steps(text: str) -> list[str]:
    steps = text.split(",")
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {sorted(unknown)}; choose from "
                                         f"{','.join(STEPS)}")
    return steps


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="the dataset folder (or --data for ingested shards)")
    p.add_argument("--format", default="fer2013-folders")
    p.add_argument("--data", help="shards already ingested with a carved val (skip ingest)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--space", default="fer2013_cnns")
    p.add_argument("--packaged", nargs="+", default=["vgg_bn"],
                   help="methods whose packaged recipe is retrained beside the winner (the "
                        "winner's method is always one)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--alone-epochs", type=int, default=3)
    p.add_argument("--cpu", action="store_true", help="no GPU (a smoke run of the protocol)")
    p.add_argument("--mps", action="store_true",
                   help="run the GPU under NVIDIA MPS (packed trials' kernels side by side)")
    p.add_argument("--set", action="append", default=[], help="added to every run")
    p.add_argument("--commit", default="")
    p.add_argument("--dataset", default="FER2013")
    p.add_argument("--steps", type=_steps, default=list(STEPS),
                   help=f"comma-separated steps to run (default all: {','.join(STEPS)})")
    p.add_argument("--winner", type=Path,
                   help="retrain this best_config.yaml (default: the search's own)")
    return p


STEPS = ("ingest", "alone", "search", "ensemble", "retrain")


def protocol(args: argparse.Namespace) -> int:
    """The steps of the module docstring that ``--steps`` names, each skipped when its
    output exists; ``report.json`` and ``rows.csv`` hold what has been measured so far."""
    work = args.work
    report_file = work / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"models": {}}
    shards = Path(args.data) if args.data else work / "shards"
    exp = work / "searches" / args.space
    steps = {"ingest": ingest_step, "alone": alone_step, "search": search_step,
             "ensemble": ensemble_step, "retrain": retrain_step}
    for step in args.steps:
        steps[step](args, shards, exp, report)
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        write_rows(work, report, args, " ".join(map(shlex.quote, sys.argv)))
    log(work, "done")
    return 0


def _runs(args: argparse.Namespace) -> list[str]:
    """Flags every training run gets: the GPU, and the ``--set`` values."""
    return [*([] if args.cpu else ["--gpu"]), *(x for s in args.set for x in ("--set", s))]


def ingest_step(args, shards: Path, exp: Path, report: dict) -> None:
    if not (shards / "manifest.json").is_file():
        run(args.work, "ingest", [sys.executable, "-m", "ray_fer.ingest", args.format,
                                  args.source, "--out", str(shards), "--val-from-train",
                                  str(args.val_fraction), "--no-progress"])
    manifest = json.loads((shards / "manifest.json").read_text())
    report["splits"] = manifest["split_source"]
    log(args.work, f"splits: { {s: sum(c.values()) for s, c in manifest['counts'].items()} }")


def alone_step(args, shards: Path, exp: Path, report: dict) -> None:
    """One packaged run alone for a few epochs: one trial's images/s."""
    alone = args.work / "runs" / "alone"
    if not (alone / "history.json").is_file():
        run(args.work, "alone", [sys.executable, "-m", "ray_fer.train", args.packaged[0],
                                 "--data", str(shards), "--epochs", str(args.alone_epochs),
                                 "--storage", str(args.work / "runs"), "--name", "alone",
                                 *_runs(args)])
    last = json.loads((alone / "history.json").read_text())[-1]
    report["alone_img_s"] = last["rows_train"] / last["time_train_s"]


def search_step(args, shards: Path, exp: Path, report: dict) -> None:
    if not (exp / "best_config.yaml").is_file():
        sampler = None if args.cpu else GpuSampler(args.work / "gpu_search.csv")
        share = [] if args.cpu else ["--gpus-per-trial", f"{1 / args.concurrent:.4f}"]
        resume = ["--resume"] if (exp / "base_configs.yaml").is_file() else []
        try:
            run(args.work, "search", [
                sys.executable, "-m", "ray_fer.tune", args.space, "--data", str(shards),
                "--num-samples", str(args.samples), "--max-concurrent", str(args.concurrent),
                "--storage", str(args.work / "searches"), "--name", args.space, *share,
                *resume, *(x for s in args.set for x in ("--set", s))])
        finally:
            if sampler is not None:
                sampler.stop()
    stats = search_stats(exp, report.get("alone_img_s"))
    if not args.cpu:
        stats |= busy(args.work / "gpu_search.csv")
    report["search"] = stats
    log(args.work, f"search: {json.dumps(stats)}")


def ensemble_step(args, shards: Path, exp: Path, report: dict) -> None:
    """The top-K ensemble of the search's trials, and it and the search's best trial
    evaluated once on test."""
    ensemble = exp / f"ensemble-top{args.top}"
    if not (ensemble / "meta.json").is_file():
        run(args.work, "ensemble", [sys.executable, "-m", "ray_fer.ensemble", str(exp),
                                    "--top", str(args.top),
                                    *(["--device", "cpu"] if args.cpu else [])])
    report["ensemble"] = json.loads((ensemble / "ensemble.json").read_text())
    report["models"][f"ensemble-top{args.top}"] = {
        "method": "ensemble", "test": [evaluate(args.work, f"ensemble-top{args.top}", ensemble)]}
    report["models"]["search-best-trial"] = {
        "method": _method_of(exp / "best_config.yaml"),
        "test": [evaluate(args.work, "search-best-trial", exp / "best_checkpoint")]}


def _method_of(config: Path) -> str:
    """The method a run config (e.g. a search's ``best_config.yaml``) trains."""
    import yaml

    return yaml.safe_load(config.read_text())["method"]


def retrain_step(args, shards: Path, exp: Path, report: dict) -> None:
    """The winner's config and the packaged recipes, ``--seeds`` seeds each, side by side;
    each run's best validation checkpoint evaluated once on test."""
    winner = args.winner or exp / "best_config.yaml"
    method = _method_of(winner)
    recipes = {"search-winner": (method, ["--config", str(winner)])}
    recipes |= {f"packaged-{m}": (m, []) for m in dict.fromkeys([method, *args.packaged])}
    share = [] if args.cpu else [
        "--set", f"resources.gpus_per_worker={1 / (len(recipes) * args.seeds):.4f}"]
    pending = []
    for variant, (name_method, extra) in recipes.items():
        for seed in range(args.seeds):
            name, folder = f"{variant}-s{seed}", args.work / "runs" / f"{variant}-s{seed}"
            if not (folder / "history.json").is_file():
                resume = ["--resume"] if (folder / "config.yaml").is_file() else []
                pending.append((name, start(args.work, name, [
                    sys.executable, "-m", "ray_fer.train", name_method, "--data", str(shards),
                    *extra, "--seed", str(seed), "--storage", str(args.work / "runs"),
                    "--name", name, *_runs(args), *share, *resume])))
    failed = [name for name, proc in pending if proc.wait() != 0]
    if failed:
        raise SystemExit(f"retrains failed: {failed}; see {args.work / 'logs'}")
    for variant, (name_method, _) in recipes.items():
        report["models"][variant] = {"method": name_method, "test": [
            evaluate(args.work, f"{variant}-s{s}",
                     best_checkpoint(args.work / "runs" / f"{variant}-s{s}"))
            for s in range(args.seeds)]}


#: The search's figures in the results data: metric → unit.
SEARCH_FIGURES = {"trials": "", "search_wall_s": "s", "trials_per_hour": "trials/h",
                  "aggregate_img_s": "img/s", "alone_img_s": "img/s",
                  "aggregate_vs_alone": "x", "gpu_busy_mean": "%", "gpu_busy_median": "%",
                  "gpu_mem_peak": "GB"}


def write_rows(work: Path, report: dict, args: argparse.Namespace, command: str) -> None:
    """``rows.csv``: one row per measured figure, in the results data's columns."""
    device = "CPU" if args.cpu else subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
        text=True).stdout.strip().splitlines()[0]
    test = report.get("splits", {}).get("test", "test")
    common = {"dataset": args.dataset, "device": device, "commit": args.commit,
              "date": dt.date.today().isoformat(), "command": command, "note": ""}
    rows = []
    for variant, model in report["models"].items():
        for seed, result in enumerate(model["test"]):
            line = common | {"table": args.dataset.lower(), "split": test, "selected_on": "val",
                             "method": model["method"], "variant": variant, "seeds": seed,
                             "epochs": "" if model["method"] == "ensemble" else result["epoch"] + 1,
                             "unit": "fraction", "std": ""}
            rows += [line | {"tta": tta, "metric": metric, "value": round(value, 4)}
                     for tta, metric, value in (
                         ("", "accuracy", result["test_accuracy"]),
                         ("", "macro_f1", result["test_macro_f1"]),
                         ("tencrop", "accuracy", result["tta"]["accuracy"]))]
    for metric, unit in SEARCH_FIGURES.items():
        value = report.get("search", {}).get(metric)
        if value is not None:
            rows.append(common | {
                "table": "search", "split": "val", "selected_on": "", "method": args.space,
                "variant": f"{args.samples} trials, {args.concurrent} at a time"
                           + (", MPS" if args.mps else ""), "tta": "",
                "seeds": "", "epochs": "", "metric": metric, "unit": unit,
                "value": f"{value:.4g}", "std": ""})
    with (work / "rows.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    t0 = time.time()
    code = main()
    print(f"elapsed {time.time() - t0:.0f} s")
    sys.exit(code)
