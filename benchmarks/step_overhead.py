"""Where a short training step loses time on the Ray path: one model's plain loop run in
the processes a ray_fer run uses, beside ray_fer's own run.

throughput.py's (b)/(a) compares ray_fer's run in a Ray Train worker with a plain loop in
the driver. When the ratio is low, this tells apart what the worker's place costs from
what ray_fer's loop costs. The same plain loop (``throughput.plain_epochs``: the
training step over GPU-resident rows, no Ray Data) runs

  driver        in this process, as throughput.py's (a);
  task          in a Ray task holding the GPU (a Ray worker process, its main thread);
  train_worker  as the worker function of ray_fer's own TorchTrainer (a Ray Train worker:
                the function runs in a thread of the worker actor, which the controller
                polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S);

then ray_fer's loop itself (``ray_fer``, throughput.py's (b)). ``--poll S`` repeats the
last two with Ray restarted at that poll interval (Ray Train's default is 2 s, ray_fer
sets 0.1 s). For each: images/s and milliseconds per step (median over epochs >= 1) and,
for the plain loop, the share of an epoch spent launching its steps (near 1: the host,
not the GPU, sets the pace).

    python benchmarks/step_overhead.py vgg_bn --rows 41000 --epochs 4 --poll 2
    python benchmarks/step_overhead.py vgg_bn --set train.compile=true \\
        --set train.cuda_graphs=true
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from ray_fer.cluster.runtime import TRAIN_POLL_ENV, TRAIN_POLL_S, connect
from ray_fer.config import Config, override
from ray_fer.train import driver
from ray_fer.train.plan import plan_run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import throughput  # noqa: E402  (a sibling script, not a package)


def summary(records: list[dict], batch: int) -> dict:
    """Images/s and ms per step (medians over epochs >= 1) of per-epoch records."""
    later = records[1:]
    rate = statistics.median(r["images"] / r["wall_s"] for r in later)
    out = {"images_per_s": rate, "ms_per_step": 1000 * batch / rate}
    if all("issue_s" in r for r in later):
        out["issue_share"] = statistics.median(r["issue_s"] / r["wall_s"] for r in later)
    return out


def in_task(cfg: Config, data: str, epochs: int) -> list[dict]:
    """The plain loop in a Ray task that holds the GPU."""
    remote = ray.remote(num_cpus=cfg.resources.cpus_per_worker,
                        num_gpus=1 if cfg.resources.gpu else 0)(throughput.plain_epochs)
    return ray.get(remote.remote(cfg, data, epochs))


def in_train_worker(cfg: Config, data: str, epochs: int, out: Path) -> list[dict]:
    """The plain loop as the worker function of ray_fer's TorchTrainer for ``cfg``; its
    records pass through ``out`` (Ray Train keeps reported metrics only with checkpoints)."""
    method, plan = plan_run(cfg)
    # The trainer creates cfg's run folder; the plain loop plans a run of its own name.
    inner = override(cfg, "run.name", f"{cfg.run.name}-plain")

    def worker(_plan: dict) -> None:
        out.write_text(json.dumps(throughput.plain_epochs(inner, data, epochs)))

    driver.build_trainer(cfg, method, plan, worker_fn=worker).fit()
    return json.loads(out.read_text())


def ray_fer_run(cfg: Config) -> list[dict]:
    """ray_fer's own run: the loop's per-epoch rows and training seconds."""
    outcome = driver.train(cfg)
    return [{"images": m["rows_train"], "wall_s": m["time_train_s"]} for m in outcome.history]


def measure(model: str, data: str, work: Path, epochs: int, batch: int | None,
            extra: dict, poll: str) -> list[dict]:
    """Every context once, at ray_fer's poll interval, then the Ray Train ones at ``poll``."""
    def cfg(context: str) -> Config:
        return throughput.config(model, data, work / "runs", f"{model}-{context}-"
                                 f"{time.time_ns()}", epochs, batch, extra)

    plain = [("driver", lambda c: throughput.plain_epochs(c, data, epochs)),
             ("task", lambda c: in_task(c, data, epochs))]
    train = [("train_worker", lambda c: in_train_worker(c, data, epochs,
                                                        work / f"{c.run.name}.json")),
             ("ray_fer", ray_fer_run)]
    # ray_fer's own poll interval (the environment's, else ray_fer's default) for every
    # context; then only the Ray Train ones again at ``poll``.
    rounds = [(os.environ.get(TRAIN_POLL_ENV), plain + train)]
    if poll:
        rounds.append((poll, train))
    rows = []
    for poll_s, contexts in rounds:
        if poll_s is not None:
            os.environ[TRAIN_POLL_ENV] = poll_s
        # Ray's workers import the plain loop from this folder.
        path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        connect(1, 1, extra={"PYTHONPATH": path})
        try:
            for name, run in contexts:
                c = cfg(name)
                row = {"context": name, "poll_s": os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_S),
                       **summary(run(c), c.train.batch_size)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        finally:
            ray.shutdown()
    return rows


def table(model: str, rows: list[dict]) -> str:
    base = rows[0]["images_per_s"]
    lines = [f"| {model}: context | poll s | images/s | ms / step | vs driver | "
             "launch share of epoch |", "|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{r['issue_share']:.2f}" if "issue_share" in r else "—"
        lines.append(f"| {r['context']} | {r['poll_s']} | {r['images_per_s']:,.0f} | "
                     f"{r['ms_per_step']:.2f} | {r['images_per_s'] / base:.2f} | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--rows", type=int, default=41000, help="procedural faces drawn")
    p.add_argument("--batch-size", type=int, help="override the model's configured batch")
    p.add_argument("--poll", default="2",
                   help="also run the Ray Train contexts at this poll interval, s "
                        "('' to skip)")
    throughput.add_run_args(p, "override a config key, e.g. --set train.compile=true")
    args = p.parse_args(argv)
    if not throughput.gpu_or_smoke(p, args, "step_overhead.py"):
        return 2
    extra = throughput.config_sets(p, args.set)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="ray_fer-overhead-"))
    data = throughput.model_faces(work, args.model, args.rows)
    rows = measure(args.model, data, work, args.epochs, args.batch_size, extra, args.poll)
    print(table(args.model, rows))
    throughput.finish(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
