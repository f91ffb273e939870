"""Where a Tune trial's start goes: wall-clock marks of each phase, per trial.

Runs ``python -m ray_fer.tune MODEL`` with a trial function that times, inside each
trial's process, the phases between the trial's start and its first training step: the
run's plan, its device, the model and optimiser build (``build_state``), the first training
batch (``first_batch``: from asking the data pipeline to getting the batch) and the end of
the first step. Phases are timed by wrapping ray_fer's own functions in the trial's
process; nothing else changes. Trials in a new process (the first ``--concurrent``) and in a
reused one are told apart by their process id.

    python benchmarks/trial_phases.py deep_emotion --trials 8 --concurrent 4 --gpus-per-trial 0.25

Prints one line per trial (seconds since the trial function started: phase start + its
duration; ``process_age_s``: how long the trial's process had existed by then, which in a
new process is its start and the trainable's imports) and writes them as JSON with
``--json``. ``--stacks S`` also samples every
thread of each trial's process every S seconds (from a thread of its own, through
``sys._current_frames``) and prints, for the trials in new processes, what each thread
running ray_fer code was doing at each sample: its innermost ray_fer frame and the
innermost frame of all (e.g. a module being imported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

#: ray_fer functions whose (start, duration) each trial records, by module.
TIMED = {"ray_fer.train.plan": ("plan_run",), "ray_fer.train.runtime": ("open_datasets",),
         "ray_fer.train.worker": ("build_state",), "ray_fer.tuning.trial": ("trial_device",)}


def _where(frame) -> str | None:
    """``innermost ray_fer frame <- innermost frame`` of a thread's stack, None if it runs
    no ray_fer code."""
    frames = traceback.extract_stack(frame)
    ours = [f for f in frames if "/ray_fer/" in f.filename]
    if not ours:
        return None

    def short(f: traceback.FrameSummary) -> str:
        return f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno} {f.name}"

    return f"{short(ours[-1])} <- {short(frames[-1])}"


def sample_stacks(every_s: float, started: float, samples: list, stop: threading.Event
                  ) -> None:
    """Append ``[seconds since started, [where of each thread running ray_fer]]`` to
    ``samples`` every ``every_s`` until ``stop`` is set."""
    me = threading.get_ident()
    while not stop.wait(every_s):
        frames = sys._current_frames()
        samples.append([round(time.time() - started, 3),
                        [w for ident, frame in frames.items()
                         if ident != me and (w := _where(frame)) is not None]])


def process_age_s() -> float | None:
    """Seconds since this process was created (Linux ``/proc``; None elsewhere). In a new
    trial process: Tune's start of it, the Ray worker's start and the trainable's imports,
    all before the trial function runs."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks


def timed_trial(params: dict, *, search, storage: str, marks_dir: str,
                stacks_s: float = 0.0) -> None:
    """``run_trial`` with its phases timed; writes ``marks-<pid>-<n>.json`` to ``marks_dir``
    (with ``stacks_s``, also the threads' stack samples, see :func:`sample_stacks`)."""
    import functools
    import importlib

    import ray_fer.train.epoch as epoch
    import ray_fer.tuning.trial as trial

    run_trial = trial.run_trial
    started = time.time()
    age = process_age_s()
    marks: dict = {"pid": os.getpid(),
                   "process_age_s": None if age is None else round(age, 3)}
    restore = []

    def wrap(module, name: str, record) -> None:
        original = getattr(module, name)
        restore.append((module, name, original))
        setattr(module, name, functools.wraps(original)(record(original, name)))

    def call(original, name):
        def timed(*args, **kwargs):
            t = time.time()
            out = original(*args, **kwargs)
            marks.setdefault(name, [round(t - started, 3), round(time.time() - t, 3)])
            return out
        return timed

    def first_batch(original, name):
        def batches(*args, **kwargs):
            t = time.time()
            for i, batch in enumerate(original(*args, **kwargs)):
                if i == 0:
                    marks.setdefault("first_batch",
                                     [round(t - started, 3), round(time.time() - t, 3)])
                yield batch
        return batches

    def first_step_done(original, name):
        def accumulate(*args, **kwargs):
            marks.setdefault("first_step_done", round(time.time() - started, 3))
            return original(*args, **kwargs)
        return accumulate

    for module_name, names in TIMED.items():
        for name in names:
            wrap(importlib.import_module(module_name), name, call)
    wrap(epoch, "fitted", first_batch)  # recorded as "first_batch"
    wrap(epoch, "accumulate", first_step_done)
    stop = threading.Event()
    if stacks_s:
        marks["stacks"] = []
        threading.Thread(target=sample_stacks, args=(stacks_s, started, marks["stacks"], stop),
                         daemon=True).start()
    try:
        run_trial(params, search=search, storage=storage)
    finally:
        stop.set()
        for module, name, original in restore:
            setattr(module, name, original)
        marks["total"] = round(time.time() - started, 3)
        path = Path(marks_dir) / f"marks-{time.time_ns()}-{os.getpid()}.json"
        path.write_text(json.dumps(marks))


def stack_timeline(samples: list, until: float) -> list[str]:
    """One line per stack sample taken up to ``until`` seconds."""
    return [f"  {at:5.2f} s  " + "\n           ".join(where or ["-"])
            for at, where in samples if at <= until]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", help="shard prefix (default: procedural faces, --rows of them)")
    p.add_argument("--rows", type=int, default=8400)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--gpus-per-trial", type=float, default=0.25)
    p.add_argument("--work", help="folder for shards, runs and marks (default: a temp folder)")
    p.add_argument("--stacks", type=float, default=0.0, metavar="S",
                   help="sample every thread's stack every S seconds (new processes shown)")
    p.add_argument("--json", help="write the marks here")
    args = p.parse_args(argv)
    import functools

    import torch

    from ray_fer import tune

    work = Path(args.work or tempfile.mkdtemp(prefix="ray_fer-phases-"))
    data = args.data
    if data is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from throughput import model_faces

        data = model_faces(work, args.model, args.rows)
    marks_dir = work / f"marks-{os.getpid()}"
    marks_dir.mkdir(parents=True)
    argv_ = [args.model, "--data", data, "--storage", str(work / "searches"),
             "--name", marks_dir.name, "--num-samples", str(args.trials),
             "--max-concurrent", str(args.concurrent), "--epochs", "1", "--grace-period", "1"]
    if torch.cuda.is_available():
        argv_ += ["--gpus-per-trial", str(args.gpus_per_trial)]
    trial_fn = functools.partial(timed_trial, marks_dir=str(marks_dir), stacks_s=args.stacks)
    code = tune.main(argv_, trial_fn=trial_fn)
    if code != 0:
        return code
    records, seen = [], set()
    for path in sorted(marks_dir.glob("marks-*.json")):  # in the order trials ended
        record = json.loads(path.read_text())
        record["process"] = "reused" if record["pid"] in seen else "new"
        seen.add(record["pid"])
        records.append(record)
        samples = record.pop("stacks", [])
        print(json.dumps(record))
        if record["process"] == "new":
            print("\n".join(stack_timeline(samples, record.get("first_step_done",
                                                               record["total"]))))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
