"""Side-by-side k-fold table of ``python -m ray_fer.train`` runs, one run per fold.

Each argument names one group of fold runs: a ``<storage>/<name>-folds.json`` that
``--fold all`` wrote, or ``NAME=GLOB`` matching local run folders (runs made with
``--fold F`` one by one, e.g. concurrently). For every fold the run's ``history.json`` is
read back, and each metric is reported twice, mean ± std over folds (population std, as
``--fold all`` prints):

- at the epoch that was best on the validation fold by the method's metric (what
  ``--fold all`` reports; optimistic when the validation fold is also the test fold);
- at the last epoch (no selection on the held-out people).

    python benchmarks/folds_table.py runs/caf-folds.json runs/base-folds.json \\
        --metrics val_valence_ccc,val_arousal_ccc,val_mean_rmse,val_mean_pcc,val_mean_sagr
    python benchmarks/folds_table.py 'caf=runs/caf-fold*' 'base=runs/caf_baseline-fold*'
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from ray_fer.storage import resolve


def _read_text(uri: str) -> str:
    loc = resolve(uri)
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read().decode()


def _read_json(uri: str) -> dict | list:
    return json.loads(_read_text(uri))


def fold_runs(group: str) -> tuple[str, list[str], str, str]:
    """(name, run URIs, selecting metric, mode) of a folds.json or a ``NAME=GLOB`` group."""
    if "=" not in group:
        summary = _read_json(group)
        return (group.rsplit("/", 1)[-1].removesuffix("-folds.json"),
                [f["run"] for f in summary["folds"]], summary["metric"],
                summary.get("mode", "max"))
    import yaml

    from ray_fer.methods.registry import get_method

    name, pattern = group.split("=", 1)
    runs = sorted(p for p in glob.glob(pattern) if os.path.isfile(p + "/history.json"))
    if not runs:
        raise ValueError(f"{group}: no run folder with a history.json matches")
    method = get_method(yaml.safe_load(_read_text(runs[0] + "/config.yaml"))["method"])
    return name, runs, method.metric, method.mode


def targets_of(run: str) -> str:
    """"derived V/A" when the run trained on V/A its data derived (its method and
    manifest), "" otherwise."""
    import yaml

    from ray_fer.data.shards import read_manifest
    from ray_fer.errors import UserError
    from ray_fer.methods.registry import get_method

    config = yaml.safe_load(_read_text(run.rstrip("/") + "/config.yaml"))
    uri = (config.get("data") or {}).get("uri")
    if not uri:
        return ""
    try:
        return get_method(config["method"]).targets_note(read_manifest(resolve(uri)).targets)
    except (OSError, UserError):
        return "targets unknown"


def fold_rows(runs: list[str], selector: str, mode: str, metrics: list[str]
              ) -> dict[str, dict[str, list[float]]]:
    """``{"best": {metric: [per fold]}, "last": {...}}`` over the fold runs."""
    out: dict[str, dict[str, list[float]]] = {"best": {}, "last": {}}
    for run in runs:
        history = _read_json(run.rstrip("/") + "/history.json")
        scored = [h for h in history if np.isfinite(h.get(selector, np.nan))]
        if not scored:
            raise ValueError(f"{run}: no epoch reported {selector}")
        best = max(scored, key=lambda h: h[selector] if mode == "max" else -h[selector])
        for which, epoch in (("best", best), ("last", history[-1])):
            for metric in metrics:
                out[which].setdefault(metric, []).append(float(epoch.get(metric, np.nan)))
    return out


def markdown(named: dict[str, dict[str, dict[str, list[float]]]], metrics: list[str]) -> str:
    """One row per (run, epoch choice), one column per metric: mean ± std over folds."""
    lines = ["| run | epoch | folds | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for name, rows in named.items():
        for which in ("best", "last"):
            cells = [f"{np.mean(rows[which][m]):.4f} ± {np.std(rows[which][m]):.4f}"
                     for m in metrics]
            folds = len(rows[which][metrics[0]])
            lines.append(f"| {name} | {which} | {folds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="+",
                   help="<storage>/<name>-folds.json files or NAME=GLOB of run folders")
    p.add_argument("--metrics", default="val_valence_ccc,val_arousal_ccc,val_mean_ccc,"
                   "val_mean_rmse,val_mean_pcc,val_mean_sagr",
                   help="comma-separated history keys (default: the V/A metrics)")
    args = p.parse_args(argv)
    metrics = args.metrics.split(",")
    named = {}
    for group in args.groups:
        name, runs, selector, mode = fold_runs(group)
        targets = targets_of(runs[0])
        named[f"{name} ({targets})" if targets else name] = fold_rows(runs, selector, mode,
                                                                       metrics)
    sys.stdout.write(markdown(named, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
